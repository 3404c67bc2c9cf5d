/* SPDX-License-Identifier: MIT */
/*
 * threads: a main thread and four pthreads, each advancing its own counter.
 *
 *   threads OUTFILE
 *
 * Worker i keeps its count in three places that must agree on every step: a local variable on its
 * own stack, a __thread variable (TLS, via its fs base) and the shared counters[i]; it also checks
 * its own 256 KiB heap buffer. Every ~100 ms the main thread checks a shared 1 MiB heap region and
 * that no counter went backwards, and appends
 *   tick=N role=main pid=P token=T mem=C c1=A c2=B c3=C c4=D
 * so a test can see every thread advancing after a restore. Any mismatch: a FAIL line and exit 1.
 */
#include "common.h"

#include <pthread.h>

#define NWORKERS 4
#define WORKER_BUF (256UL << 10)
#define MAIN_MEM (1UL << 20)

static uint64_t token;
static uint64_t counters[NWORKERS];
static __thread uint64_t tls_count;

static void *worker(void *arg)
{
	long idx = (long)arg;
	uint64_t seed = token ^ (uint64_t)(idx + 1) * 0x9E3779B97F4A7C15ULL;
	char *buf = malloc(WORKER_BUF);
	uint64_t mine = 0;

	if (!buf)
		fail("worker %ld: malloc", idx + 1);
	pattern_fill(buf, WORKER_BUF, seed);
	for (;;) {
		uint64_t shared = __atomic_load_n(&counters[idx], __ATOMIC_ACQUIRE);

		if (shared != mine || tls_count != mine)
			fail("worker %ld: counter %lu, tls %lu, stack %lu", idx + 1, shared, tls_count, mine);
		if ((mine & 15) == 0) {
			long bad = pattern_check(buf, WORKER_BUF, seed);

			if (bad >= 0)
				fail("worker %ld: buffer word %ld corrupt", idx + 1, bad);
		}
		mine++;
		tls_count++;
		__atomic_store_n(&counters[idx], mine, __ATOMIC_RELEASE);
		sleep_ms(5 + idx);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s OUTFILE\n", argv[0]);
		return 2;
	}
	open_output(argv[1]);
	token = random_u64();

	char *mem = malloc(MAIN_MEM);
	if (!mem)
		fail("malloc");
	pattern_fill(mem, MAIN_MEM, token);

	pthread_t th[NWORKERS];
	for (long i = 0; i < NWORKERS; i++) {
		int err = pthread_create(&th[i], NULL, worker, (void *)i);

		if (err)
			fail("pthread_create: %s", strerror(err));
	}

	uint64_t seen[NWORKERS] = { 0 };
	uint64_t tick = 0;
	for (;;) {
		uint64_t c[NWORKERS];
		long bad;

		tick++;
		for (int i = 0; i < NWORKERS; i++) {
			c[i] = __atomic_load_n(&counters[i], __ATOMIC_ACQUIRE);
			if (c[i] < seen[i])
				fail("tick %lu: worker %d counter went back from %lu to %lu", tick, i + 1, seen[i], c[i]);
			seen[i] = c[i];
		}
		if ((bad = pattern_check(mem, MAIN_MEM, token)) >= 0)
			fail("tick %lu: heap word %ld corrupt", tick, bad);
		emit("tick=%lu role=main pid=%d token=%016lx mem=%016lx c1=%lu c2=%lu c3=%lu c4=%lu", tick,
		     (int)getpid(), token, checksum(mem, MAIN_MEM), c[0], c[1], c[2], c[3]);
		sleep_ms(100);
	}
}
