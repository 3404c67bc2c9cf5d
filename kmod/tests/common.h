/* SPDX-License-Identifier: GPL-2.0 */
/* Helpers shared by the in-guest tests of spice.ko (static binary). */
#ifndef SPICE_TEST_COMMON_H
#define SPICE_TEST_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/types.h>
#include "../include/uapi/spice.h"

#define PAGE 4096UL
#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif
#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31)
#endif
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* raw syscalls: usable in the restored context without libc state */
static inline long rsys(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall" : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

/* A request under construction; serialized by rb_build(). */
struct rb {
	struct spice_restore hdr;
	struct spice_file files[32];
	unsigned int nfiles;
	struct spice_vma vmas[512];
	unsigned int nvmas;
	struct spice_source srcs[4096];
	unsigned int nsrcs;
	struct spice_ws ws[64];
	unsigned int nws;
	struct spice_range keep[SPICE_MAX_KEEP];
	unsigned int nkeep;
	uint8_t xsave[16384] __attribute__((aligned(64)));
	uint32_t xsave_len;
};

void rb_init(struct rb *r);
int rb_file(struct rb *r, int fd, uint32_t role, uint32_t flags);
struct spice_vma *rb_vma(struct rb *r, uint64_t start, uint64_t end, uint32_t prot,
			 uint32_t flags, uint32_t kind, int file, uint64_t pgoff);
void rb_src(struct rb *r, uint64_t start, uint64_t nr, uint64_t off, uint32_t file);
void rb_ws(struct rb *r, uint64_t start, uint64_t nr, uint32_t flags);
void rb_keep_vdso(struct rb *r);
/* malloc'ed request; *len = total size */
struct spice_restore *rb_build(const struct rb *r, size_t *len);

/* FPU */
int cpu_has_xsave(void);
uint32_t capture_xsave(uint8_t *buf, uint32_t size, uint64_t allowed);

/* misc */
uint64_t get_fs_base(void);
int read_file(const char *path, char *buf, size_t size);
long read_stat(const char *name);
int write_all(int fd, const void *buf, size_t len);
void pattern_fill(void *p, size_t len, uint32_t seed);
extern struct spice_version g_ver;
extern int g_dev;

/* results, in a MAP_SHARED page so that forked children can count too */
struct counters {
	int failed, passed;
	unsigned int fuzz_next;
	unsigned int fuzz_done;
	unsigned int fuzz_errno[160];
	unsigned int fuzz_ok;
};
extern struct counters *g_cnt;
#define CHECK(cond, ...) do { \
	if (!(cond)) { printf("FAIL %s:%d: ", __func__, __LINE__); \
		printf(__VA_ARGS__); printf("\n"); fflush(stdout); \
		__atomic_add_fetch(&g_cnt->failed, 1, __ATOMIC_SEQ_CST); } \
	else { __atomic_add_fetch(&g_cnt->passed, 1, __ATOMIC_SEQ_CST); } } while (0)

/* test entry points */
void test_version(void);
void test_restore(uint32_t policy, int copy_all);
void test_errors(void);
void test_kill_after_teardown(void);
void test_fuzz(unsigned int n);
void test_variants(void);

/* a small valid request that restores into "exit_group(77)" */
struct mini {
	struct rb rb;
	int pages_fd, data_fd, memfd, exe_fd;
	uint64_t base;
};
void mini_build(struct mini *m, int with_fpu);
void mini_close(struct mini *m);
#define MINI_EXIT 77

#endif
