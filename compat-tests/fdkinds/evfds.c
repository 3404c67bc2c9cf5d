/* SPDX-License-Identifier: MIT */
/*
 * evfds: one process holding every "event" fd kind, checking on every tick that their kernel state
 * is what it should be.
 *
 *   evfds OUTFILE
 *
 * State: an eventfd (counter grows by one per tick, drained every 16 ticks), a pipe and a unix
 * socketpair (one token per tick goes through each), a periodic CLOCK_MONOTONIC timerfd (100 ms,
 * the program's only clock), a signalfd for SIGUSR1 (blocked), and an epoll set over the pipe's read
 * end, the eventfd, the timerfd, the signalfd and one end of the socketpair (edge-triggered), each
 * with its own data word. The loop waits in epoll_wait() for the timerfd; on each expiration it
 * writes the tokens and the eventfd increment, then asks epoll (timeout 0) which targets are ready:
 * the pipe, the eventfd and the socket must be, each under its own data word. It also reads its
 * own /proc/self/fdinfo: the eventfd counter must be the expected one, the signalfd mask must be
 * SIGUSR1's, and the epoll target list (fd, events, data) must be the one registered. Appends
 *   tick=N role=main pid=P token=T eps=C tint=I efd=E expirations=X sigs=S
 * eps (a checksum of the epoll target list) and tint (the timer interval read back with
 * timerfd_gettime) are constant; efd follows tick; sigs counts SIGUSR1s read from the signalfd.
 * Any mismatch: a FAIL line and exit 1.
 */
#pragma GCC diagnostic ignored "-Wunused-function" /* common.h helpers not used here */
#include "../workloads/common.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#define INTERVAL_NS 100000000L
#define D_PIPE 0x1111000000000001ULL
#define D_EFD 0x2222000000000002ULL
#define D_TFD 0x3333000000000003ULL
#define D_SFD 0x4444000000000004ULL
#define D_SOCK 0x5555000000000005ULL

static int fdinfo_fd(int fd)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		fail("open %s: %s", path, strerror(errno));
	return f;
}

/* the whole fdinfo text of one of our fds */
static void read_fdinfo(int fd, char *buf, size_t size)
{
	int f = fdinfo_fd(fd);
	ssize_t n, got = 0;

	while ((n = read(f, buf + got, size - 1 - (size_t)got)) > 0)
		got += n;
	if (n < 0)
		fail("read fdinfo %d: %s", fd, strerror(errno));
	buf[got] = 0;
	close(f);
}

static unsigned long long fdinfo_value(int fd, const char *key, int base)
{
	char buf[4096];
	read_fdinfo(fd, buf, sizeof(buf));
	char *p = strstr(buf, key);
	if (!p)
		fail("fdinfo of %d has no %s", fd, key);
	return strtoull(p + strlen(key), NULL, base);
}

static int cmp_u64x3(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;

	for (int i = 0; i < 3; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

/* FNV-1a over the "tfd: events: data:" triples of an epoll fd, sorted (the kernel lists them in
 * the order of its red-black tree, keyed by file addresses that change across a restore) */
static uint64_t epoll_set_sum(int epfd, int *count)
{
	char buf[4096];
	uint64_t h = 0xcbf29ce484222325ULL, t[16][3];
	int n = 0;

	read_fdinfo(epfd, buf, sizeof(buf));
	for (char *p = strstr(buf, "tfd:"); p && n < 16; p = strstr(p + 1, "tfd:")) {
		int tfd;
		unsigned events;
		unsigned long long data;
		if (sscanf(p, "tfd: %d events: %x data: %llx", &tfd, &events, &data) != 3)
			fail("bad epoll fdinfo line: %.60s", p);
		t[n][0] = (uint64_t)tfd;
		t[n][1] = events;
		t[n][2] = data;
		n++;
	}
	qsort(t, (size_t)n, sizeof(t[0]), cmp_u64x3);
	for (int i = 0; i < n; i++)
		for (int j = 0; j < 3; j++) {
			h ^= t[i][j];
			h *= 0x100000001b3ULL;
		}
	*count = n;
	return h;
}

static void add(int epfd, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		fail("epoll_ctl add %d: %s", fd, strerror(errno));
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s OUTFILE\n", argv[0]);
		return 2;
	}
	open_output(argv[1]);
	uint64_t token = random_u64();

	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	int pfd[2], sk[2];
	if (efd < 0 || pipe2(pfd, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sk) < 0)
		fail("eventfd/pipe/socketpair: %s", strerror(errno));

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		fail("sigprocmask: %s", strerror(errno));
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0)
		fail("signalfd: %s", strerror(errno));

	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct itimerspec its = { .it_interval = { 0, INTERVAL_NS }, .it_value = { 0, INTERVAL_NS } };
	if (tfd < 0 || timerfd_settime(tfd, 0, &its, NULL) < 0)
		fail("timerfd: %s", strerror(errno));

	int epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		fail("epoll_create1: %s", strerror(errno));
	add(epfd, pfd[0], EPOLLIN, D_PIPE);
	add(epfd, efd, EPOLLIN, D_EFD);
	add(epfd, tfd, EPOLLIN, D_TFD);
	add(epfd, sfd, EPOLLIN, D_SFD);
	add(epfd, sk[0], EPOLLIN | EPOLLET, D_SOCK);
	int ntargets;
	uint64_t eps = epoll_set_sum(epfd, &ntargets);
	if (ntargets != 5)
		fail("epoll fdinfo lists %d targets, registered 5", ntargets);

	uint64_t tick = 0, expirations = 0, sigs = 0, efd_expect = 0;
	for (;;) {
		struct epoll_event evs[8];
		int n = epoll_wait(epfd, evs, 8, 2000);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("epoll_wait: %s", strerror(errno));
		if (n == 0)
			fail("tick %lu: no timerfd expiration in 2 s", tick);
		int timer = 0;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u64 == D_TFD) {
				uint64_t exp;
				ssize_t r = read(tfd, &exp, sizeof(exp));
				if (r < 0 && (errno == EAGAIN || errno == EINTR))
					continue;
				if (r != sizeof(exp) || exp == 0)
					fail("tick %lu: timerfd read %zd: %s", tick, r, strerror(errno));
				expirations += exp;
				timer = 1;
			} else if (evs[i].data.u64 == D_SFD) {
				struct signalfd_siginfo si;
				while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
					if (si.ssi_signo != SIGUSR1)
						fail("signalfd gave signal %u", si.ssi_signo);
					sigs++;
				}
			} else if (evs[i].data.u64 != D_EFD && evs[i].data.u64 != D_PIPE &&
				   evs[i].data.u64 != D_SOCK) {
				fail("tick %lu: epoll reported unknown data %016lx", tick, (unsigned long)evs[i].data.u64);
			}
		}
		if (!timer)
			continue;
		tick++;

		/* one token through the pipe and the socket, one count into the eventfd */
		uint64_t tok = token ^ (tick * 0x9E3779B97F4A7C15ULL), got;
		uint64_t one = 1;
		if (write(pfd[1], &tok, 8) != 8 || write(sk[1], &tok, 8) != 8 || write(efd, &one, 8) != 8)
			fail("tick %lu: write: %s", tick, strerror(errno));
		efd_expect++;

		/* epoll must report exactly our targets with their data words */
		int seen_pipe = 0, seen_efd = 0, seen_sock = 0;
		n = epoll_wait(epfd, evs, 8, 0);
		for (int i = 0; i < n; i++) {
			seen_pipe |= evs[i].data.u64 == D_PIPE;
			seen_efd |= evs[i].data.u64 == D_EFD;
			seen_sock |= evs[i].data.u64 == D_SOCK;
		}
		if (!seen_pipe || !seen_efd || !seen_sock)
			fail("tick %lu: epoll missed pipe=%d eventfd=%d socket=%d (%d events)", tick, seen_pipe,
			     seen_efd, seen_sock, n);
		if (read(pfd[0], &got, 8) != 8 || got != tok)
			fail("tick %lu: pipe token wrong or missing", tick);
		if (read(sk[0], &got, 8) != 8 || got != tok)
			fail("tick %lu: socket token wrong or missing", tick);

		/* kernel state as /proc reports it */
		unsigned long long count = fdinfo_value(efd, "eventfd-count:", 16);
		if (count != efd_expect)
			fail("tick %lu: eventfd counter %llu, expected %lu", tick, count, efd_expect);
		unsigned long long smask = fdinfo_value(sfd, "sigmask:", 16);
		if (smask != 1ULL << (SIGUSR1 - 1))
			fail("tick %lu: signalfd mask %llx", tick, smask);
		int nt;
		if (epoll_set_sum(epfd, &nt) != eps || nt != 5)
			fail("tick %lu: epoll target list changed (%d targets)", tick, nt);
		struct itimerspec cur;
		if (timerfd_gettime(tfd, &cur) < 0)
			fail("timerfd_gettime: %s", strerror(errno));
		if (cur.it_interval.tv_sec != 0 || cur.it_interval.tv_nsec != INTERVAL_NS ||
		    (cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0) || cur.it_value.tv_sec > 0)
			fail("tick %lu: timer interval %ld.%09ld value %ld.%09ld", tick, (long)cur.it_interval.tv_sec,
			     cur.it_interval.tv_nsec, (long)cur.it_value.tv_sec, cur.it_value.tv_nsec);

		emit("tick=%lu role=main pid=%d token=%016lx eps=%016lx tint=%ld efd=%llu expirations=%lu sigs=%lu",
		     tick, (int)getpid(), token, eps, cur.it_interval.tv_nsec, count, expirations, sigs);

		if (tick % 16 == 0) {
			uint64_t v;
			if (read(efd, &v, 8) != 8 || v != efd_expect)
				fail("tick %lu: eventfd drained %lu, expected %lu", tick, v, efd_expect);
			efd_expect = 0;
		}
	}
}
