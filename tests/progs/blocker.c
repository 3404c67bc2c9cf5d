/* SPDX-License-Identifier: MIT */
/* Blocks in one restartable syscall (made through checked_syscall), then reports how it ended:
 *   blocker MODE [MS]   MODE: sleep clock absclock futex poll epoll read pause vfork
 * prints "ready" before blocking and "done ret=R bad=B ms=T [data=...]" after. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include "checked.h"

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void on_usr1(int sig) { (void)sig; }

int main(int argc, char **argv)
{
	const char *mode = argv[1];
	long ms = argc > 2 ? atol(argv[2]) : 0;
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	unsigned long bad = 0, seed = 0x5a5a5a5a00000000UL ^ (unsigned long)getpid();
	char buf[128] = "";
	long ret;
	int word = 0;
	struct sigaction sa = { .sa_handler = on_usr1 };  /* no SA_RESTART */

	sigaction(SIGUSR1, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	double t0 = now_ms();
	printf("ready\n");
	if (!strcmp(mode, "sleep")) {
		ret = checked_syscall(SYS_nanosleep, (long)&ts, 0, seed, &bad, 0, 0);
	} else if (!strcmp(mode, "clock")) {
		ret = checked_syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, seed, &bad, (long)&ts, 0);
	} else if (!strcmp(mode, "absclock")) {
		struct timespec abs;
		clock_gettime(CLOCK_MONOTONIC, &abs);
		abs.tv_sec += ts.tv_sec;
		abs.tv_nsec += ts.tv_nsec;
		if (abs.tv_nsec >= 1000000000L) { abs.tv_sec++; abs.tv_nsec -= 1000000000L; }
		ret = checked_syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, TIMER_ABSTIME, seed, &bad, (long)&abs, 0);
	} else if (!strcmp(mode, "futex")) {
		ret = checked_syscall(SYS_futex, (long)&word, FUTEX_WAIT_PRIVATE, seed, &bad, 0, (long)&ts);
	} else if (!strcmp(mode, "poll")) {
		struct pollfd p = { .fd = 0, .events = POLLIN };
		ret = checked_syscall(SYS_poll, (long)&p, 1, seed, &bad, ms ? ms : -1, 0);
	} else if (!strcmp(mode, "epoll")) {
		int ep = epoll_create1(0);
		struct epoll_event ev = { .events = EPOLLIN }, out;
		epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
		ret = checked_syscall(SYS_epoll_wait, ep, (long)&out, seed, &bad, 1, ms ? ms : -1);
	} else if (!strcmp(mode, "read")) {
		ret = checked_syscall(SYS_read, 0, (long)buf, seed, &bad, sizeof(buf) - 1, 0);
		if (ret > 0)
			buf[ret] = 0;
	} else if (!strcmp(mode, "vfork")) {
		/* the parent sits in vfork's killable (not interruptible) wait for MS */
		pid_t c = vfork();
		if (c == 0) {
			nanosleep(&ts, NULL);
			_exit(0);
		}
		ret = c > 0 ? 0 : -1;
	} else if (!strcmp(mode, "pause")) {
		ret = checked_syscall(SYS_pause, 0, 0, seed, &bad, 0, 0);
	} else {
		return 2;
	}
	printf("done ret=%ld bad=%#lx ms=%.1f data=%s\n", ret, bad, now_ms() - t0, buf);
	return 0;
}
