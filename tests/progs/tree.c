/* SPDX-License-Identifier: MIT */
/* A 3-process tree: parent -> child -> grandchild, each printing "ROLE PID N" every 10 ms.
 *   tree [churn]   with churn the grandchild also keeps forking short-lived children. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void loop(const char *role, int churn)
{
	struct timespec ts = { 0, 10000000 };
	for (unsigned long n = 0;; n++) {
		printf("%s %d %lu\n", role, getpid(), n);
		if (churn) {
			pid_t c = fork();
			if (c == 0) {
				struct timespec s = { 0, 500000 };
				nanosleep(&s, NULL);
				_exit(0);
			}
			waitpid(c, NULL, 0);
		}
		nanosleep(&ts, NULL);
	}
}

int main(int argc, char **argv)
{
	int churn = argc > 1 && !strcmp(argv[1], "churn");
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (fork() == 0) {
		if (fork() == 0)
			loop("grandchild", churn);
		loop("child", 0);
	}
	loop("parent", 0);
}
