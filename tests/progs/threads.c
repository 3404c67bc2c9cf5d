/* SPDX-License-Identifier: MIT */
/* A multi-threaded target:  threads NTHREADS [churn]
 * NTHREADS workers tick a counter every ms; with "churn" the main thread keeps creating short-lived
 * threads and forking short-lived children (to race a freeze). Prints "ready" then
 * "tick T" every 20 ms with the workers' total count. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long counts[64];

static void *worker(void *arg)
{
	long i = (long)arg;
	struct timespec ts = { 0, 1000000 };
	for (;;) {
		counts[i]++;
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static void *brief(void *arg)
{
	struct timespec ts = { 0, 200000 };
	nanosleep(&ts, NULL);
	return arg;
}

int main(int argc, char **argv)
{
	int n = atoi(argv[1]);
	int churn = argc > 2 && !strcmp(argv[2], "churn");
	pthread_t t;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (long i = 0; i < n && i < 64; i++)
		pthread_create(&t, NULL, worker, (void *)i);
	printf("ready\n");
	struct timespec tick = { 0, 20000000 }, last, cur;
	clock_gettime(CLOCK_MONOTONIC, &last);
	for (;;) {
		if (churn) {
			pthread_create(&t, NULL, brief, NULL);
			pid_t c = fork();
			if (c == 0) {
				struct timespec ts = { 0, 300000 };
				nanosleep(&ts, NULL);
				_exit(0);
			}
			pthread_join(t, NULL);
			waitpid(c, NULL, 0);
		} else {
			nanosleep(&tick, NULL);
		}
		clock_gettime(CLOCK_MONOTONIC, &cur);
		if ((cur.tv_sec - last.tv_sec) * 1000000000L + cur.tv_nsec - last.tv_nsec >= 20000000L) {
			unsigned long total = 0;
			for (int i = 0; i < n; i++)
				total += counts[i];
			printf("tick %lu\n", total);
			last = cur;
		}
	}
}
