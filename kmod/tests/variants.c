// SPDX-License-Identifier: GPL-2.0
/*
 * Return-path variants of a successful restore, on the mini request:
 *  - %rax values the ioctl cannot return as an int (or that the VFS would
 *    rewrite) still reach the restored context;
 *  - without SPICE_RF_REGS the call returns 0 to the caller's own code,
 *    which survives in a keep range (a restorer's scratch page).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "common.h"

/* lea 600(%rax),%rdi; mov $231,%eax; syscall: exit code = (rax + 600) & 0xff */
static const uint8_t rax_blob[] = {
	0x48, 0x8d, 0xb8, 0x58, 0x02, 0x00, 0x00, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05,
};

/* syscall (the ioctl); lea 100(%rax),%rdi; mov $231,%eax; syscall */
static const uint8_t scratch_blob[] = {
	0x0f, 0x05, 0x48, 0x8d, 0x78, 0x64, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05,
};

static int run(pid_t pid)
{
	int st = 0;

	waitpid(pid, &st, 0);
	return st;
}

static void test_rax(int64_t ax)
{
	static struct mini m;
	struct spice_restore *h;
	size_t len;
	pid_t pid;
	int st;

	fflush(stdout);
	pid = fork();
	if (!pid) {
		uint8_t page[PAGE];

		mini_build(&m, 1);
		/* the code page of the mini image gets a second blob at +64 */
		pread(m.pages_fd, page, PAGE, 0);
		memcpy(page + 64, rax_blob, sizeof(rax_blob));
		pwrite(m.pages_fd, page, PAGE, 0);
		m.rb.hdr.regs.ip = m.base + 64;
		m.rb.hdr.regs.ax = (uint64_t)ax;
		h = rb_build(&m.rb, &len);
		ioctl(g_dev, SPICE_IOC_RESTORE, h);
		_exit(1);
	}
	st = run(pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == (int)((ax + 600) & 0xff),
	      "restored %%rax=%lld: status 0x%x", (long long)ax, st);
}

static void test_no_regs(void)
{
	static struct mini m;
	long ok0 = read_stat("restores_ok");
	pid_t pid;
	int st;

	fflush(stdout);
	pid = fork();
	if (!pid) {
		struct spice_restore *h;
		size_t len;
		uint8_t *scratch = mmap((void *)0x310000000000ULL, PAGE,
					PROT_READ | PROT_WRITE | PROT_EXEC,
					MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		unsigned int i;

		memcpy(scratch, scratch_blob, sizeof(scratch_blob));
		mini_build(&m, 0);
		m.rb.hdr.flags &= ~SPICE_RF_REGS;
		/* keep ranges stay sorted: the scratch page is below the vDSO */
		memmove(&m.rb.keep[1], &m.rb.keep[0], m.rb.nkeep * sizeof(m.rb.keep[0]));
		m.rb.keep[0].start = (uint64_t)scratch;
		m.rb.keep[0].end = (uint64_t)scratch + PAGE;
		m.rb.nkeep++;
		for (i = 1; i < m.rb.nkeep; i++)
			if (m.rb.keep[i].start < m.rb.keep[0].end)
				_exit(2);
		h = rb_build(&m.rb, &len);
		__asm__ volatile("mov %0, %%rdi\n\tmov %1, %%rsi\n\tmov %2, %%rdx\n\t"
				 "mov $16, %%eax\n\tjmp *%3"
				 : : "r"((long)g_dev), "r"((long)SPICE_IOC_RESTORE), "r"(h),
				   "r"(scratch) : "rdi", "rsi", "rdx", "rax", "memory");
		_exit(3);
	}
	st = run(pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 100,
	      "no SPICE_RF_REGS: the caller's kept code returns 0: status 0x%x", st);
	CHECK(read_stat("restores_ok") == ok0 + 1, "restores_ok counted");
}

void test_variants(void)
{
	test_rax(-515);			/* -ENOIOCTLCMD: the VFS would say ENOTTY */
	test_rax(-4);			/* fits an int: the ioctl's return value */
	test_rax(0x100000007LL);	/* does not fit an int */
	test_rax(0x7fffffffffffffffLL);
	test_no_regs();
	printf("ok   return paths: %%rax (int, non-int, -ENOIOCTLCMD), no-REGS return into kept code\n");
}
