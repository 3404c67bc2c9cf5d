/* SPDX-License-Identifier: MIT */
/*
 * counter: one process whose every kind of state must survive a checkpoint/restore.
 *
 *   counter OUTFILE          (run in its own directory: creates counter.in and counter.map there)
 *
 * State: a 4 MiB private anonymous mapping, a 1 MiB MAP_SHARED|MAP_ANONYMOUS mapping (its first
 * word carries the last tick, so it must come back with its contents), a 64 KiB MAP_SHARED mapping
 * of counter.map, a pipe (round trip of one word every step), and counter.in opened read-only, read
 * one byte per step (so the file position must come back). Every ~100 ms it checks all of it and
 * appends
 *   tick=N role=main pid=P token=T anon=C shm=C fmap=C fpos=K byte=B
 * where the checksums are computed from memory each time (constant for one run, different between
 * runs) and fpos is the input position after the read (it steps by one like tick). Any mismatch:
 * a FAIL line and exit 1. The patterns are seeded at random at start, so a freshly started counter
 * can never pass for a restored one.
 */
#include "common.h"

#include <sys/mman.h>

#define ANON_SIZE (4UL << 20)
#define SHM_SIZE (1UL << 20)
#define SHM_HDR 4096UL /* first page of the shared region: tick slot; pattern after it */
#define FMAP_SIZE (64UL << 10)
#define IN_SIZE (1L << 20)

/* byte i of counter.in: 131 is odd, so 256 consecutive positions all hold different bytes */
static unsigned char in_byte(long i)
{
	return (unsigned char)((i * 131 + 7 + (i >> 8)) & 0xff);
}

static void *map_or_die(size_t len, int flags, int fd, const char *what)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);

	if (p == MAP_FAILED)
		fail("mmap %s: %s", what, strerror(errno));
	return p;
}

static void make_input(const char *path)
{
	static unsigned char buf[IN_SIZE];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0)
		fail("create %s: %s", path, strerror(errno));
	for (long i = 0; i < IN_SIZE; i++)
		buf[i] = in_byte(i);
	if (write_all(fd, buf, sizeof(buf)) < 0 || close(fd) < 0)
		fail("write %s: %s", path, strerror(errno));
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s OUTFILE\n", argv[0]);
		return 2;
	}
	open_output(argv[1]);

	uint64_t token = random_u64();
	uint64_t seed_anon = random_u64(), seed_shm = random_u64(), seed_fmap = random_u64();

	char *anon = map_or_die(ANON_SIZE, MAP_PRIVATE | MAP_ANONYMOUS, -1, "anon");
	pattern_fill(anon, ANON_SIZE, seed_anon);

	char *shm = map_or_die(SHM_SIZE, MAP_SHARED | MAP_ANONYMOUS, -1, "shm");
	volatile uint64_t *shm_tick = (volatile uint64_t *)shm;
	*shm_tick = 0;
	pattern_fill(shm + SHM_HDR, SHM_SIZE - SHM_HDR, seed_shm);

	int mfd = open("counter.map", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (mfd < 0 || ftruncate(mfd, FMAP_SIZE) < 0)
		fail("counter.map: %s", strerror(errno));
	char *fmap = map_or_die(FMAP_SIZE, MAP_SHARED, mfd, "counter.map");
	pattern_fill(fmap, FMAP_SIZE, seed_fmap);
	if (msync(fmap, FMAP_SIZE, MS_SYNC) < 0)
		fail("msync: %s", strerror(errno));
	close(mfd);

	make_input("counter.in");
	int in_fd = open("counter.in", O_RDONLY | O_CLOEXEC);
	if (in_fd < 0)
		fail("open counter.in: %s", strerror(errno));
	long inpos = 0;

	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0)
		fail("pipe: %s", strerror(errno));

	uint64_t tick = 0;
	for (;;) {
		tick++;

		/* pipe round trip */
		uint64_t sent = token ^ (tick * 0x100000001b3ULL), got = 0;
		if (write_all(pfd[1], &sent, sizeof(sent)) < 0 || read_all(pfd[0], &got, sizeof(got)) != 8)
			fail("tick %lu: pipe round trip: %s", tick, strerror(errno));
		if (got != sent)
			fail("tick %lu: pipe gave %016lx, sent %016lx", tick, got, sent);

		/* the next byte of the input file, at the position we expect */
		if (inpos == IN_SIZE) {
			if (lseek(in_fd, 0, SEEK_SET) != 0)
				fail("rewind counter.in: %s", strerror(errno));
			inpos = 0;
		}
		unsigned char byte;
		if (read_all(in_fd, &byte, 1) != 1)
			fail("tick %lu: read counter.in at %ld: %s", tick, inpos, strerror(errno));
		if (byte != in_byte(inpos))
			fail("tick %lu: counter.in byte %u, expected %u at %ld", tick, byte, in_byte(inpos), inpos);
		inpos++;
		off_t cur = lseek(in_fd, 0, SEEK_CUR);
		if (cur != inpos)
			fail("tick %lu: counter.in position %ld, expected %ld", tick, (long)cur, inpos);

		/* memory, checked word by word and summed as it is now */
		long bad;
		if ((bad = pattern_check(anon, ANON_SIZE, seed_anon)) >= 0)
			fail("tick %lu: anon word %ld corrupt", tick, bad);
		if (*shm_tick != tick - 1)
			fail("tick %lu: shared anon tick slot %lu, expected %lu", tick, *shm_tick, tick - 1);
		*shm_tick = tick;
		if ((bad = pattern_check(shm + SHM_HDR, SHM_SIZE - SHM_HDR, seed_shm)) >= 0)
			fail("tick %lu: shared anon word %ld corrupt", tick, bad);
		if ((bad = pattern_check(fmap, FMAP_SIZE, seed_fmap)) >= 0)
			fail("tick %lu: counter.map word %ld corrupt", tick, bad);

		emit("tick=%lu role=main pid=%d token=%016lx anon=%016lx shm=%016lx fmap=%016lx fpos=%ld byte=%u",
		     tick, (int)getpid(), token, checksum(anon, ANON_SIZE),
		     checksum(shm + SHM_HDR, SHM_SIZE - SHM_HDR), checksum(fmap, FMAP_SIZE), inpos, byte);
		sleep_ms(100);
	}
}
