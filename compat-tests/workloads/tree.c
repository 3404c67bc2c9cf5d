/* SPDX-License-Identifier: MIT */
/*
 * tree: a process tree joined by pipes, parent -> child1 -> child2.
 *
 *   tree OUTFILE
 *
 * Every ~100 ms the parent sends the next sequence number down a pipe to child1, which checks it
 * and forwards it down a second pipe to child2, which checks it too. Each process has its own
 * 1 MiB private anonymous region (seeded from the shared token and its role) and appends
 *   tick=N role=parent|child1|child2 pid=P ppid=Q token=T seq=S mem=C
 * to the shared O_APPEND file (one write() per line). seq equals tick in every process: a word lost
 * or repeated in a pipe (e.g. pipe data in flight at dump time) breaks that. Any mismatch: a FAIL
 * line and exit 1. The children die with their parent (PR_SET_PDEATHSIG, or EOF on their pipe).
 */
#include "common.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#define MEM_SIZE (1UL << 20)

static uint64_t token;

static char *role_memory(uint64_t seed)
{
	char *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		fail("mmap: %s", strerror(errno));
	pattern_fill(mem, MEM_SIZE, seed);
	return mem;
}

static void step_line(uint64_t tick, uint64_t seq, const char *mem, uint64_t seed)
{
	long bad = pattern_check(mem, MEM_SIZE, seed);

	if (bad >= 0)
		fail("tick %lu: memory word %ld corrupt", tick, bad);
	emit("tick=%lu role=%s pid=%d ppid=%d token=%016lx seq=%lu mem=%016lx", tick, role, (int)getpid(),
	     (int)getppid(), token, seq, checksum(mem, MEM_SIZE));
}

/* child: receive seq from in_fd, check it, pass it on to out_fd (if any) */
static void __attribute__((noreturn)) relay(const char *name, uint64_t salt, pid_t parent, int in_fd, int out_fd)
{
	role = name;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		fail("prctl: %s", strerror(errno));
	if (getppid() != parent)
		_exit(0);

	uint64_t seed = token ^ salt;
	char *mem = role_memory(seed);
	uint64_t tick = 0;

	for (;;) {
		uint64_t seq;
		ssize_t n = read_all(in_fd, &seq, sizeof(seq));

		if (n == 0)
			_exit(0); /* the writer is gone */
		if (n != (ssize_t)sizeof(seq))
			fail("tick %lu: read pipe: %s", tick + 1, strerror(errno));
		tick++;
		if (seq != tick)
			fail("tick %lu: pipe gave seq %lu", tick, seq);
		if (out_fd >= 0 && write_all(out_fd, &seq, sizeof(seq)) < 0)
			fail("tick %lu: write pipe: %s", tick, strerror(errno));
		step_line(tick, seq, mem, seed);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s OUTFILE\n", argv[0]);
		return 2;
	}
	open_output(argv[1]);
	role = "parent";
	token = random_u64();
	signal(SIGPIPE, SIG_IGN);

	int p1[2], p2[2];
	if (pipe2(p1, O_CLOEXEC) < 0 || pipe2(p2, O_CLOEXEC) < 0)
		fail("pipe: %s", strerror(errno));

	pid_t parent = getpid();
	pid_t c1 = fork();
	if (c1 < 0)
		fail("fork: %s", strerror(errno));
	if (c1 == 0) {
		close(p1[1]);
		close(p2[0]);
		relay("child1", 0x1111111111111111ULL, parent, p1[0], p2[1]);
	}
	pid_t c2 = fork();
	if (c2 < 0)
		fail("fork: %s", strerror(errno));
	if (c2 == 0) {
		close(p1[0]);
		close(p1[1]);
		close(p2[1]);
		relay("child2", 0x2222222222222222ULL, parent, p2[0], -1);
	}
	close(p1[0]);
	close(p2[0]);
	close(p2[1]);

	uint64_t seed = token ^ 0x3333333333333333ULL;
	char *mem = role_memory(seed);
	uint64_t tick = 0;
	for (;;) {
		tick++;
		if (write_all(p1[1], &tick, sizeof(tick)) < 0)
			fail("tick %lu: write pipe to child1: %s", tick, strerror(errno));
		step_line(tick, tick, mem, seed);
		sleep_ms(100);
	}
}
