/* SPDX-License-Identifier: MIT */
/* A self-checking workload for tracer-robustness tests: loops on checked nanosleeps, keeps a buffer
 * whose sum it verifies, and reports:  "n=N sum=S bad=B eintr=E" every 20 iterations.
 * Exits with status 2 ("BAD ...") on a clobbered register or a corrupted buffer.
 *   spin USEC */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include "checked.h"

#define N 65536
static unsigned long buf[N];

int main(int argc, char **argv)
{
	long us = argc > 1 ? atol(argv[1]) : 1000;
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	unsigned long expect = 0, eintr = 0, bad = 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	for (unsigned long i = 1;; i++) {
		long r = checked_syscall(SYS_nanosleep, (long)&ts, 0, i * 0x9e3779b97f4a7c15UL, &bad, 0, 0);
		if (r == -4)
			eintr++;
		else if (r != 0) {
			printf("BAD ret=%ld\n", r);
			return 2;
		}
		if (bad) {
			printf("BAD regs=%#lx at n=%lu\n", bad, i);
			return 2;
		}
		buf[(i * 7919) % N] += i;
		expect += i;
		if (i % 20 == 0) {
			unsigned long sum = 0;
			for (int j = 0; j < N; j++)
				sum += buf[j];
			if (sum != expect) {
				printf("BAD sum=%lu expect=%lu\n", sum, expect);
				return 2;
			}
			printf("n=%lu sum=%lu bad=%lu eintr=%lu\n", i, sum, bad, eintr);
		}
	}
}
