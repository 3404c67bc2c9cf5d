// SPDX-License-Identifier: GPL-2.0
/*
 * Fuzz: mutate the valid mini request (bit flips, interesting values in
 * random or targeted fields, table swaps, size changes) and send it from a
 * forked worker.  Rejected requests leave the worker alive, so one worker
 * sends many; a request that restores (or kills) the worker makes the parent
 * fork the next one.  The kernel log must stay clean (kmod-ci checks it) and
 * no file reference may leak.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include "common.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static const uint64_t interesting[] = {
	0, 1, 2, 3, 7, 8, 0x20, 0xff, 0x100, 0xfff, 0x1000, 0x1001, 0xffff, 0x10000,
	0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ULL, 0x7ffffffff000ULL,
	0x800000000000ULL, 0xffff800000000000ULL, ~0ULL, ~0ULL - 4095, 1ULL << 63,
	SPICE_MAX_VMAS, SPICE_MAX_SOURCES, 64ULL << 20, 0x300000000000ULL,
	0x300000010000ULL, 0x300000051000ULL,
};

static void put(uint8_t *p, int size, uint64_t v)
{
	memcpy(p, &v, size);
}

/* header-heavy mutation of one request of len bytes */
static void mutate(uint8_t *buf, size_t len)
{
	struct spice_restore *h = (struct spice_restore *)buf;
	int rounds = 1 + rnd() % 3, r;

	for (r = 0; r < rounds; r++) {
		size_t off = rnd() % (rnd() % 4 ? offsetof(struct spice_restore, mm) : len);
		uint64_t v = rnd() % 3 ? interesting[rnd() % ARRAY_LEN(interesting)] : rnd();

		switch (rnd() % 8) {
		case 0:
		case 1:
			buf[rnd() % len] ^= 1 << (rnd() % 8);
			break;
		case 2:
			put(buf + (off & ~7UL), 8, v);
			break;
		case 3:
			put(buf + (off & ~3UL), 4, v);
			break;
		case 4: {	/* a table field */
			struct spice_table *t = &h->files + rnd() % 6;
			uint32_t *f = (uint32_t *)t + rnd() % 4;

			*f = rnd() % 2 ? (uint32_t)v : *f + (rnd() % 5) - 2;
			break;
		}
		case 5: {	/* a field of a table entry */
			struct spice_table *t = &h->files + rnd() % 5;

			if (t->count && t->offset < len && t->entry_size) {
				size_t e = t->offset + (rnd() % t->count) * t->entry_size +
					   (rnd() % t->entry_size & ~7UL);

				if (e + 8 <= len)
					put(buf + e, rnd() % 2 ? 8 : 4, v);
			}
			break;
		}
		case 6: {	/* swap two entries of a table */
			struct spice_table *t = &h->files + rnd() % 5;

			if (t->count > 1 && t->entry_size <= 64 &&
			    t->offset + (uint64_t)t->count * t->entry_size <= len) {
				uint8_t tmp[64];
				uint8_t *a = buf + t->offset + (rnd() % t->count) * t->entry_size;
				uint8_t *b = buf + t->offset + (rnd() % t->count) * t->entry_size;

				memcpy(tmp, a, t->entry_size);
				memcpy(a, b, t->entry_size);
				memcpy(b, tmp, t->entry_size);
			}
			break;
		}
		default:
			h->total_size = rnd() % 2 ? (uint32_t)v : h->total_size + (rnd() % 64) - 32;
			break;
		}
	}
}

static __attribute__((noreturn)) void worker(const uint8_t *base, size_t len, unsigned int n,
					     int limit_as)
{
	static uint8_t buf[1 << 16];
	unsigned int i;

	if (limit_as) {
		/* every accepted real request then fails after the teardown */
		struct rlimit rl = { 4096, 4096 };

		setrlimit(RLIMIT_AS, &rl);
	}

	for (;;) {
		i = __atomic_fetch_add(&g_cnt->fuzz_next, 1, __ATOMIC_SEQ_CST);
		if (i >= n)
			_exit(0);
		rng_state = 0x9e3779b97f4a7c15ULL * (i + 1) ^ 0x5350494345ULL;
		memcpy(buf, base, len);
		mutate(buf, len);
		/* most requests are validation-only: keep the worker alive */
		if (rnd() % 10 < 7)
			((struct spice_restore *)buf)->flags |= SPICE_RF_DRY_RUN;
		__atomic_add_fetch(&g_cnt->fuzz_done, 1, __ATOMIC_SEQ_CST);
		if (ioctl(g_dev, SPICE_IOC_RESTORE, buf)) {
			int e = errno < 160 ? errno : 159;

			__atomic_add_fetch(&g_cnt->fuzz_errno[e], 1, __ATOMIC_SEQ_CST);
		} else {
			__atomic_add_fetch(&g_cnt->fuzz_ok, 1, __ATOMIC_SEQ_CST);
		}
	}
}

/* active objects of a slab cache (/proc/slabinfo), -1 if unknown */
static long slab_active(const char *cache)
{
	static char buf[65536];
	char *p;
	size_t n = strlen(cache);

	if (read_file("/proc/slabinfo", buf, sizeof(buf)) <= 0)
		return -1;
	for (p = buf; (p = strstr(p, cache)); p++)
		if ((p == buf || p[-1] == '\n') && p[n] == ' ')
			return strtol(p + n, NULL, 10);
	return -1;
}

void test_fuzz(unsigned int n)
{
	static struct mini m;
	struct spice_restore *base;
	struct timespec t0, t1;
	unsigned int forks = 0, restored = 0, killed = 0, crashed = 0, i;
	long files0, files1;
	size_t len;
	double secs;
	int st;

	mini_build(&m, 1);
	base = rb_build(&m.rb, &len);
	files0 = slab_active("filp");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	g_cnt->fuzz_next = 0;
	while (g_cnt->fuzz_next < n) {
		pid_t pid;

		fflush(stdout);
		pid = fork();
		if (!pid)
			worker((const uint8_t *)base, len, n, forks % 3 == 2);
		forks++;
		waitpid(pid, &st, 0);
		if (WIFEXITED(st) && WEXITSTATUS(st) == MINI_EXIT)
			restored++;
		else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
			killed++;
		else if (WIFSIGNALED(st))
			crashed++;	/* restored into a mutated (bogus) context */
		else
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fuzz worker status 0x%x", st);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	mini_close(&m);
	usleep(200000);
	files1 = slab_active("filp");
	CHECK(g_cnt->fuzz_done >= n, "fuzz sent %u requests", g_cnt->fuzz_done);
	CHECK(read_stat("files_held") == 0 && read_stat("requests_live") == 0,
	      "module holds no file reference or request after the fuzz");
	CHECK(files1 >= 0 && files1 <= files0 + 64, "filp objects %ld -> %ld", files0, files1);
	printf("ok   fuzz: %u requests in %.1f s (%u workers): %u accepted, %u restored+exited, %u killed after teardown, %u restored into a bogus context; filp slab objects %ld -> %ld\n",
	       g_cnt->fuzz_done, secs, forks, g_cnt->fuzz_ok, restored, killed, crashed, files0,
	       files1);
	printf("     errno histogram:");
	for (i = 0; i < 160; i++)
		if (g_cnt->fuzz_errno[i])
			printf(" %s=%u", strerrorname_np(i) ? strerrorname_np(i) : "?",
			       g_cnt->fuzz_errno[i]);
	printf("\n");
	free(base);
}
