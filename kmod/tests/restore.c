// SPDX-License-Identifier: GPL-2.0
/*
 * Full restore test: a forked child checkpoints itself the way CRIU would
 * (its own VMAs from /proc/self/maps, private/anonymous pages found with
 * /proc/self/pagemap written to a pages image) and adds test VMAs of every
 * kind with known contents, then calls SPICE_IOC_RESTORE.  It lands in
 * spice_entry with the requested registers and FPU state; the restored code
 * checks registers, FPU, signal state, mm fields, exe, every test byte and
 * protection, the page-table state the prefault policy promised, and exits
 * with RESTORED_OK.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <ucontext.h>
#include <elf.h>
#include <linux/rseq.h>
#include <linux/futex.h>
#include <asm/prctl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "common.h"

#define RESTORED_OK	0x5a
#define TB		0x200000000000ULL
#define RSEQ_SIG	0x53590000u

enum { V_ANON, V_RO, V_NONE, V_FPRIV, V_FSHR, V_SHM, V_PF, V_STACK, V_COPY,
	V_EXEC, V_ARGS, V_RSEQ, V_ALT, NV };

struct tvma {
	uint64_t start;
	uint32_t npages;
	uint32_t prot;
	char shared;
};

static const struct tvma T[NV] = {
	[V_ANON] = { TB + 0x000000, 16, PROT_READ | PROT_WRITE, 0 },
	[V_RO] = { TB + 0x100000, 4, PROT_READ, 0 },
	[V_NONE] = { TB + 0x200000, 2, PROT_NONE, 0 },
	[V_FPRIV] = { TB + 0x300000, 3, PROT_READ | PROT_WRITE, 0 },
	[V_FSHR] = { TB + 0x400000, 2, PROT_READ | PROT_WRITE, 1 },
	[V_SHM] = { TB + 0x500000, 3, PROT_READ | PROT_WRITE, 1 },
	[V_PF] = { TB + 0x600000, 64, PROT_READ | PROT_WRITE, 0 },
	[V_STACK] = { TB + 0x800000, 16, PROT_READ | PROT_WRITE, 0 },
	[V_COPY] = { TB + 0x900000, 8, PROT_READ | PROT_WRITE, 0 },
	[V_EXEC] = { TB + 0xa00000, 1, PROT_READ | PROT_EXEC, 0 },
	[V_ARGS] = { TB + 0xb00000, 1, PROT_READ | PROT_WRITE, 0 },
	[V_RSEQ] = { TB + 0xc00000, 1, PROT_READ | PROT_WRITE, 0 },
	[V_ALT] = { TB + 0xd00000, 4, PROT_READ | PROT_WRITE, 0 },
};

/* present ranges (first page, npages) of the anonymous test VMAs */
static const struct { int v; uint32_t first, n; } SRC[] = {
	{ V_ANON, 0, 3 }, { V_ANON, 5, 4 }, { V_RO, 0, 4 }, { V_NONE, 0, 1 },
	{ V_FPRIV, 1, 1 }, { V_PF, 0, 64 }, { V_COPY, 0, 2 }, { V_COPY, 4, 4 },
	{ V_EXEC, 0, 1 }, { V_ARGS, 0, 1 }, { V_RSEQ, 0, 1 },
};

#define SEED(v, p)	(1000u * (v) + (p))
#define FILE_SEED(p)	(5000u + (p))
#define SHM_SEED(p)	(6000u + (p))

static const char ARGS[] = "spice\0restored\0";
static const char ENVS[] = "SPICE=1\0MODE=kmod\0";

/* user_regs_struct order; ip, sp, cs, ss, fs_base... are set separately */
#define XREG(i)		(0x5350494345000000ULL + ((uint64_t)(i) << 8) + 0x11 * (i))
#define EXP_FLAGS	0x0ec7ULL	/* CF PF ZF SF DF OF + IF + bit 1 */
#define FLAG_MASK	0x0cd5ULL
#define EXP_MXCSR	0x7f80u
#define EXP_FCW		0x027fu
#define GS_BASE		0x123456789000ULL

/* everything the restored code compares against lives in restored memory */
static struct {
	uint32_t policy;
	int copy_all;
	int fpu;
	int pages_fd, data_fd, memfd, exe_fd;
	uint64_t fs_base;
	uint64_t blocked;
	struct spice_mm mm;
	char pages_path[64];
	char *heap_probe;
	char canary[32];
	volatile int usr1_hits;
	volatile uint64_t usr1_sp;
	volatile int segv_hits;
} G;

struct saved {
	uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15;
	uint64_t rsp, rflags;
	uint32_t mxcsr;
	uint16_t fcw, pad;
	uint8_t xmm[16][16];
};

void spice_entry(void);
void spice_sigreturn(void);
long spice_probe_write(void *addr);
extern char spice_probe_insn[], spice_probe_fault[];
__attribute__((noreturn, used)) void spice_restored_main(struct saved *s);

__asm__(
	".text\n"
	".globl spice_entry\n"
	"spice_entry:\n"
	"	pushfq\n"
	"	cld\n"
	"	sub $512, %rsp\n"
	"	mov %rax, 0(%rsp)\n	mov %rbx, 8(%rsp)\n	mov %rcx, 16(%rsp)\n"
	"	mov %rdx, 24(%rsp)\n	mov %rsi, 32(%rsp)\n	mov %rdi, 40(%rsp)\n"
	"	mov %rbp, 48(%rsp)\n	mov %r8, 56(%rsp)\n	mov %r9, 64(%rsp)\n"
	"	mov %r10, 72(%rsp)\n	mov %r11, 80(%rsp)\n	mov %r12, 88(%rsp)\n"
	"	mov %r13, 96(%rsp)\n	mov %r14, 104(%rsp)\n	mov %r15, 112(%rsp)\n"
	"	lea 520(%rsp), %rax\n	mov %rax, 120(%rsp)\n"
	"	mov 512(%rsp), %rax\n	mov %rax, 128(%rsp)\n"
	"	stmxcsr 136(%rsp)\n	fnstcw 140(%rsp)\n"
	"	movdqu %xmm0, 144(%rsp)\n	movdqu %xmm1, 160(%rsp)\n"
	"	movdqu %xmm2, 176(%rsp)\n	movdqu %xmm3, 192(%rsp)\n"
	"	movdqu %xmm4, 208(%rsp)\n	movdqu %xmm5, 224(%rsp)\n"
	"	movdqu %xmm6, 240(%rsp)\n	movdqu %xmm7, 256(%rsp)\n"
	"	movdqu %xmm8, 272(%rsp)\n	movdqu %xmm9, 288(%rsp)\n"
	"	movdqu %xmm10, 304(%rsp)\n	movdqu %xmm11, 320(%rsp)\n"
	"	movdqu %xmm12, 336(%rsp)\n	movdqu %xmm13, 352(%rsp)\n"
	"	movdqu %xmm14, 368(%rsp)\n	movdqu %xmm15, 384(%rsp)\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call spice_restored_main\n"
	"	ud2\n"
	".globl spice_sigreturn\n"
	"spice_sigreturn:\n"
	"	mov $15, %eax\n	syscall\n	ud2\n"
	".globl spice_probe_write\n"
	"spice_probe_write:\n"
	"	xor %eax, %eax\n"
	".globl spice_probe_insn\n"
	"spice_probe_insn:\n"
	"	movb $0x5a, (%rdi)\n	ret\n"
	".globl spice_probe_fault\n"
	"spice_probe_fault:\n"
	"	mov $1, %eax\n	ret\n");

/* code run from V_EXEC: mov $0x1234, %eax; ret */
static const uint8_t exec_blob[] = { 0xb8, 0x34, 0x12, 0x00, 0x00, 0xc3 };

/* ---------- restored side (raw syscalls only) ---------- */

static void say(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	rsys(SYS_write, 2, (long)s, n, 0, 0, 0);
}

static __attribute__((noreturn)) void die(int code, const char *what)
{
	say("restored: FAIL ");
	say(what);
	say("\n");
	rsys(SYS_exit_group, code, 0, 0, 0, 0, 0);
	__builtin_unreachable();
}

#define RCHECK(code, cond) do { if (!(cond)) die(code, #cond); } while (0)

static int page_is(const void *p, uint32_t seed)
{
	const uint32_t *w = p;
	uint32_t i;

	for (i = 0; i < PAGE / 4; i++)
		if (w[i] != seed * 2654435761u + i * 40503u + 0x9e3779b9u)
			return 0;
	return 1;
}

static int page_zero(const void *p)
{
	const uint64_t *w = p;
	uint32_t i;

	for (i = 0; i < PAGE / 8; i++)
		if (w[i])
			return 0;
	return 1;
}

static char rbuf[65536];

static long rread(const char *path, char *buf, long size)
{
	long fd = rsys(SYS_open, (long)path, O_RDONLY, 0, 0, 0, 0), n = 0, r;

	if (fd < 0)
		return -1;
	while (n < size - 1 && (r = rsys(SYS_read, fd, (long)buf + n, size - 1 - n, 0, 0, 0)) > 0)
		n += r;
	rsys(SYS_close, fd, 0, 0, 0, 0, 0);
	buf[n] = 0;
	return n;
}

static uint64_t hex(const char **p)
{
	uint64_t v = 0;

	for (;; (*p)++) {
		char c = **p;

		if (c >= '0' && c <= '9')
			v = v * 16 + c - '0';
		else if (c >= 'a' && c <= 'f')
			v = v * 16 + c - 'a' + 10;
		else
			return v;
	}
}

/* every /proc/self/maps line inside VMA v has its protection; covered fully */
static void check_maps(int v, int want_path, int want_anon)
{
	uint64_t s0 = T[v].start, e0 = s0 + T[v].npages * PAGE, covered = 0;
	const char *p = rbuf;

	rread("/proc/self/maps", rbuf, sizeof(rbuf));
	while (*p) {
		const char *line = p, *eol = p;
		uint64_t s, e;

		while (*eol && *eol != '\n')
			eol++;
		s = hex(&p);
		p++;
		e = hex(&p);
		p++;
		if (s < e0 && e > s0) {
			RCHECK(40 + v, s >= s0 && e <= e0);
			RCHECK(60 + v, p[0] == (T[v].prot & PROT_READ ? 'r' : '-'));
			RCHECK(60 + v, p[1] == (T[v].prot & PROT_WRITE ? 'w' : '-'));
			RCHECK(60 + v, p[2] == (T[v].prot & PROT_EXEC ? 'x' : '-'));
			RCHECK(60 + v, p[3] == (T[v].shared ? 's' : 'p'));
			if (want_anon)
				RCHECK(80 + v, eol[-1] == ' ' || eol[-1] == ']');
			if (want_path && s == s0) {
				const char *q = line, *n = G.pages_path;

				while (q < eol && *q != '/')
					q++;
				while (*n && q < eol && *q == *n)
					q++, n++;
				RCHECK(100 + v, !*n);
			}
			covered += e - s;
		}
		p = *eol ? eol + 1 : eol;
	}
	RCHECK(120 + v, covered == e0 - s0);
}

/* pagemap: bit 63 present, bit 61 file page / shared anon */
static uint64_t pm(long fd, uint64_t addr)
{
	uint64_t e = 0;

	rsys(SYS_pread64, fd, (long)&e, 8, (addr / PAGE) * 8, 0, 0);
	return e;
}

static void check_prefault(void)
{
	long fd = rsys(SYS_open, (long)"/proc/self/pagemap", O_RDONLY, 0, 0, 0, 0);
	uint64_t b = T[V_PF].start, i;
	const uint64_t present = 1ULL << 63, file = 1ULL << 61;

	RCHECK(130, fd >= 0);
	for (i = 0; i < 64; i++) {
		uint64_t e = pm(fd, b + i * PAGE);

		if (G.copy_all) {	/* copied: anonymous and present */
			RCHECK(138, (e & present) && !(e & file));
			continue;
		}
		switch (G.policy) {
		case SPICE_PREFAULT_NONE:
			RCHECK(131, !(e & present));
			break;
		case SPICE_PREFAULT_WS:
			if (i < 4)
				RCHECK(132, (e & present) && (e & file));
			else if (i >= 16 && i < 20)
				RCHECK(133, (e & present) && !(e & file));
			else if (i >= 20)
				RCHECK(134, !(e & present));
			break;
		case SPICE_PREFAULT_ALL:
			RCHECK(135, e & present);
			if (i >= 16 && i < 20)
				RCHECK(136, !(e & file));
			else if (!G.copy_all)
				RCHECK(137, e & file);
			break;
		}
	}
	rsys(SYS_close, fd, 0, 0, 0, 0, 0);
}

static void usr1(int sig, siginfo_t *si, void *uc)
{
	int local;

	(void)sig;
	(void)si;
	(void)uc;
	G.usr1_sp = (uint64_t)&local;
	G.usr1_hits++;
}

static void segv(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;

	(void)sig;
	(void)si;
	if (uc->uc_mcontext.gregs[REG_RIP] == (greg_t)spice_probe_insn) {
		uc->uc_mcontext.gregs[REG_RIP] = (greg_t)spice_probe_fault;
		G.segv_hits++;
		return;
	}
	die(9, "unexpected SIGSEGV");
}

static long field(const char *stat, int n)
{
	const char *p = stat;
	long v = 0;
	int f = 2;

	while (*p && *p != ')')	/* skip "pid (comm" */
		p++;
	for (; *p && f < n; p++)
		if (*p == ' ')
			f++;
	while (*p >= '0' && *p <= '9')
		v = v * 10 + (*p++ - '0');
	return v;
}

static void check_task_state(void)
{
	struct spice_sigaction k;
	uint64_t v, len;
	stack_t ss;
	struct rseq *rs = (struct rseq *)T[V_RSEQ].start;

	rsys(SYS_arch_prctl, ARCH_GET_FS, (long)&v, 0, 0, 0, 0);
	RCHECK(20, v == G.fs_base);
	rsys(SYS_arch_prctl, ARCH_GET_GS, (long)&v, 0, 0, 0, 0);
	RCHECK(21, v == GS_BASE);
	RCHECK(22, rsys(SYS_rt_sigprocmask, SIG_BLOCK, 0, (long)&v, 8, 0, 0) == 0 &&
		   v == G.blocked);
	RCHECK(23, rsys(SYS_rt_sigaction, SIGUSR1, 0, (long)&k, 8, 0, 0) == 0);
	RCHECK(23, k.handler == (uint64_t)usr1 && k.restorer == (uint64_t)spice_sigreturn &&
		   k.flags == (SA_SIGINFO | SA_ONSTACK | SA_RESTORER) &&
		   k.mask == 1ULL << (SIGUSR2 - 1));
	RCHECK(24, rsys(SYS_sigaltstack, 0, (long)&ss, 0, 0, 0, 0) == 0);
	RCHECK(24, (uint64_t)ss.ss_sp == T[V_ALT].start && ss.ss_size == 4 * PAGE &&
		   (unsigned int)ss.ss_flags == SS_AUTODISARM);
	RCHECK(25, rsys(SYS_prctl, PR_GET_TID_ADDRESS, (long)&v, 0, 0, 0, 0) == 0 &&
		   v == T[V_ARGS].start + 0x800);
	RCHECK(26, rsys(SYS_get_robust_list, 0, (long)&v, (long)&len, 0, 0, 0) == 0 &&
		   v == T[V_ARGS].start + 0x900 && len == sizeof(struct robust_list_head));
	/* the kernel updated the registered rseq area (it held 77) on the way out */
	RCHECK(27, rs->cpu_id_start == rs->cpu_id && rs->cpu_id < 64);
	RCHECK(28, rsys(SYS_rseq, (long)rs, sizeof(*rs), 0, RSEQ_SIG, 0, 0) == -EBUSY);
	RCHECK(28, rsys(SYS_rseq, (long)rs, sizeof(*rs), 0, RSEQ_SIG + 1, 0, 0) == -EPERM);

	/* signal delivery in the restored context, on the alternate stack */
	rsys(SYS_kill, rsys(SYS_getpid, 0, 0, 0, 0, 0, 0), SIGUSR1, 0, 0, 0, 0);
	RCHECK(29, G.usr1_hits == 1 && G.usr1_sp >= T[V_ALT].start &&
		   G.usr1_sp < T[V_ALT].start + 4 * PAGE);
	RCHECK(30, rsys(SYS_fcntl, G.pages_fd, F_GETFD, 0, 0, 0, 0) == -EBADF);
	RCHECK(31, rsys(SYS_fcntl, G.data_fd, F_GETFD, 0, 0, 0, 0) >= 0);
}

static void check_mm(void)
{
	const struct spice_mm *m = &G.mm;
	long n, i;

	RCHECK(32, rread("/proc/self/stat", rbuf, sizeof(rbuf)) > 0);
	RCHECK(33, (uint64_t)field(rbuf, 26) == m->start_code &&
		   (uint64_t)field(rbuf, 27) == m->end_code &&
		   (uint64_t)field(rbuf, 28) == m->start_stack);
	RCHECK(34, (uint64_t)field(rbuf, 45) == m->start_data &&
		   (uint64_t)field(rbuf, 46) == m->end_data &&
		   (uint64_t)field(rbuf, 47) == m->start_brk &&
		   (uint64_t)field(rbuf, 48) == m->arg_start &&
		   (uint64_t)field(rbuf, 49) == m->arg_end &&
		   (uint64_t)field(rbuf, 50) == m->env_start &&
		   (uint64_t)field(rbuf, 51) == m->env_end);
	RCHECK(35, (uint64_t)rsys(SYS_brk, 0, 0, 0, 0, 0, 0) == m->brk);
	n = rread("/proc/self/cmdline", rbuf, sizeof(rbuf));
	RCHECK(36, n == sizeof(ARGS) - 1);
	for (i = 0; i < n; i++)
		RCHECK(36, rbuf[i] == ARGS[i]);
	n = rread("/proc/self/environ", rbuf, sizeof(rbuf));
	RCHECK(37, n == sizeof(ENVS) - 1);
	for (i = 0; i < n; i++)
		RCHECK(37, rbuf[i] == ENVS[i]);
	n = rread("/proc/self/auxv", rbuf, sizeof(rbuf));
	RCHECK(38, n >= (long)(m->auxv_words * 8));
	for (i = 0; i < (long)m->auxv_words; i++)
		RCHECK(38, ((uint64_t *)rbuf)[i] == m->auxv[i]);
	n = rsys(SYS_readlink, (long)"/proc/self/exe", (long)rbuf, 256, 0, 0, 0);
	RCHECK(39, n == 14 && !__builtin_memcmp(rbuf, "/tmp/spice-exe", 14));
	RCHECK(39, rsys(SYS_open, (long)"/tmp/spice-exe", O_WRONLY, 0, 0, 0, 0) == -ETXTBSY);
}

static void check_contents(void)
{
	uint8_t *a;
	uint32_t i, j;
	long (*fn)(void) = (long (*)(void))T[V_EXEC].start;

	a = (uint8_t *)T[V_ANON].start;
	for (i = 0; i < 16; i++)
		RCHECK(140, (i < 3 || (i >= 5 && i < 9)) ? page_is(a + i * PAGE, SEED(V_ANON, i))
							 : page_zero(a + i * PAGE));
	a = (uint8_t *)T[V_RO].start;
	for (i = 0; i < 4; i++)
		RCHECK(141, page_is(a + i * PAGE, SEED(V_RO, i)));
	RCHECK(142, spice_probe_write(a) == 1 && G.segv_hits == 1);
	RCHECK(142, page_is(a, SEED(V_RO, 0)));
	a = (uint8_t *)T[V_NONE].start;
	RCHECK(143, spice_probe_write(a) == 1 && G.segv_hits == 2);
	RCHECK(143, rsys(SYS_mprotect, (long)a, 2 * PAGE, PROT_READ, 0, 0, 0) == 0);
	RCHECK(143, page_is(a, SEED(V_NONE, 0)) && page_zero(a + PAGE));
	a = (uint8_t *)T[V_FPRIV].start;
	RCHECK(144, page_is(a, FILE_SEED(1)) && page_is(a + PAGE, SEED(V_FPRIV, 1)) &&
		    page_is(a + 2 * PAGE, FILE_SEED(3)));
	a[0] ^= 0xff;	/* private: the file must not change */
	RCHECK(144, rsys(SYS_pread64, G.data_fd, (long)rbuf, PAGE, PAGE, 0, 0) == PAGE &&
		    page_is(rbuf, FILE_SEED(1)));
	a = (uint8_t *)T[V_FSHR].start;
	RCHECK(145, page_is(a, FILE_SEED(0)) && page_is(a + PAGE, FILE_SEED(1)));
	a[PAGE + 8] ^= 0xff;	/* shared: the file sees it */
	RCHECK(145, rsys(SYS_pread64, G.data_fd, (long)rbuf, PAGE, PAGE, 0, 0) == PAGE &&
		    (uint8_t)rbuf[8] == a[PAGE + 8]);
	a[PAGE + 8] ^= 0xff;
	a = (uint8_t *)T[V_SHM].start;
	for (i = 0; i < 3; i++)
		RCHECK(146, page_is(a + i * PAGE, SHM_SEED(i)));
	a[2 * PAGE] ^= 0x55;
	RCHECK(146, rsys(SYS_pread64, G.memfd, (long)rbuf, 8, 2 * PAGE, 0, 0) == 8 &&
		    (uint8_t)rbuf[0] == a[2 * PAGE]);
	a = (uint8_t *)T[V_PF].start;
	for (i = 0; i < 64; i++)
		RCHECK(147, page_is(a + i * PAGE, SEED(V_PF, i)));
	a = (uint8_t *)T[V_COPY].start;
	for (i = 0; i < 8; i++)
		RCHECK(148, (i < 2 || i >= 4) ? page_is(a + i * PAGE, SEED(V_COPY, i))
					      : page_zero(a + i * PAGE));
	a = (uint8_t *)T[V_STACK].start;
	for (i = 0; i < 8; i++)
		RCHECK(149, page_zero(a + i * PAGE));
	RCHECK(150, fn() == 0x1234);
	for (i = 0, j = 0; G.canary[i]; i++)
		j += G.canary[i] == "spice-canary-0123456789"[i];
	RCHECK(151, j == 23 && G.heap_probe && page_is(G.heap_probe, 4242));
}

void spice_restored_main(struct saved *s)
{
	uint32_t i, j;

	/* registers exactly as requested */
	RCHECK(10, s->rax == XREG(10));
	RCHECK(10, s->rbx == XREG(5));
	RCHECK(10, s->rcx == XREG(11));
	RCHECK(10, s->rdx == XREG(12));
	RCHECK(10, s->rsi == XREG(13));
	RCHECK(10, s->rdi == XREG(14));
	RCHECK(10, s->rbp == XREG(4));
	RCHECK(11, s->r8 == XREG(9));
	RCHECK(11, s->r9 == XREG(8));
	RCHECK(11, s->r10 == XREG(7));
	RCHECK(11, s->r11 == XREG(6));
	RCHECK(11, s->r12 == XREG(3));
	RCHECK(11, s->r13 == XREG(2));
	RCHECK(11, s->r14 == XREG(1));
	RCHECK(11, s->r15 == XREG(0));
	RCHECK(12, s->rsp == T[V_STACK].start + 16 * PAGE - 256);
	RCHECK(13, (s->rflags & FLAG_MASK) == (EXP_FLAGS & FLAG_MASK) && (s->rflags & 0x200));
	if (G.fpu) {
		RCHECK(14, s->mxcsr == EXP_MXCSR && s->fcw == EXP_FCW);
		for (i = 0; i < 16; i++)
			for (j = 0; j < 16; j++)
				RCHECK(15, s->xmm[i][j] == (uint8_t)((i * 16 + j) ^ 0xa5));
	}
	check_prefault();	/* before anything touches V_PF */
	check_maps(V_ANON, !G.copy_all, G.copy_all);
	for (i = V_RO; i < NV; i++)
		check_maps(i, 0, i == V_COPY ||
			   (G.copy_all && i != V_FPRIV && !T[i].shared));
	check_task_state();
	check_mm();
	check_contents();
	say("restored: all checks passed\n");
	rsys(SYS_exit_group, RESTORED_OK, 0, 0, 0, 0, 0);
	__builtin_unreachable();
}

/* ---------- checkpoint side (runs in the forked child) ---------- */

static struct rb R;
static int pages_out;		/* write end of the pages image */
static uint64_t pages_off;
static int f_pages, f_map[64], n_map;
static char map_path[64][256];

static uint64_t add_pages(const void *p, uint64_t npages)
{
	uint64_t off = pages_off;

	write_all(pages_out, p, npages * PAGE);
	pages_off += npages * PAGE;
	return off;
}

static int map_file_idx(const char *path)
{
	int i, fd;

	for (i = 0; i < n_map; i++)
		if (!strcmp(map_path[i], path))
			return f_map[i];
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	snprintf(map_path[n_map], sizeof(map_path[0]), "%s", path);
	f_map[n_map] = rb_file(&R, fd, SPICE_FILE_MAP, 0);
	return f_map[n_map++];
}

/* CRIU-style dump of our own VMAs: pages that are ours (anonymous) */
static void dump_self(void)
{
	static char maps[65536];
	char *line, *save;
	int pm_fd = open("/proc/self/pagemap", O_RDONLY);

	read_file("/proc/self/maps", maps, sizeof(maps));
	for (line = strtok_r(maps, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		unsigned long s, e, off, ino, a;
		char perms[8], dev[16], path[256] = "";
		struct spice_source *last;
		unsigned int first;
		uint32_t prot = 0, flags = MAP_PRIVATE;
		int fidx = -1, n;
		struct spice_vma *v;

		n = sscanf(line, "%lx-%lx %7s %lx %15s %lu %255s", &s, &e, perms, &off, dev,
			   &ino, path);
		if (n < 6 || e > 0x800000000000UL || strstr(path, "[v"))
			continue;	/* vdso/vvar are kept; vsyscall is not a VMA */
		if ((s >= TB && s < TB + 0x1000000) || perms[3] == 's')
			continue;	/* shared pages (the test counters) are not ours */
		prot |= perms[0] == 'r' ? PROT_READ : 0;
		prot |= perms[1] == 'w' ? PROT_WRITE : 0;
		prot |= perms[2] == 'x' ? PROT_EXEC : 0;
		if (path[0] == '/') {
			fidx = map_file_idx(path);
			v = rb_vma(&R, s, e, prot, flags, SPICE_VMA_FILE_PRIVATE, fidx, off / PAGE);
		} else {
			flags |= MAP_ANONYMOUS;
			if (!strcmp(path, "[stack]"))
				flags |= MAP_GROWSDOWN;
			v = rb_vma(&R, s, e, prot, flags, SPICE_VMA_ANON_PRIVATE, -1, 0);
		}
		if (G.copy_all)
			v->vflags |= SPICE_VMAF_COPY;
		if (!(prot & PROT_READ))
			continue;
		first = R.nsrcs;
		for (a = s; a < e; a += PAGE) {
			uint64_t ent = 0;

			pread(pm_fd, &ent, 8, (a / PAGE) * 8);
			if (!(ent >> 63))
				continue;		/* not present: hole / file */
			if (fidx >= 0 && (ent >> 61 & 1))
				continue;		/* unmodified file page */
			if (fidx < 0 && page_zero((void *)a))
				continue;		/* zero page: hole */
			off = add_pages((void *)a, 1);
			last = &R.srcs[R.nsrcs - 1];
			if (R.nsrcs > first && last->start + last->nr_pages * PAGE == a &&
			    last->offset + last->nr_pages * PAGE == off)
				last->nr_pages++;	/* extend the previous range */
			else
				rb_src(&R, a, 1, off, f_pages);
		}
	}
	close(pm_fd);
}

static int cmp_vma(const void *a, const void *b)
{
	const struct spice_vma *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

static int cmp_src(const void *a, const void *b)
{
	const struct spice_source *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

static int make_pattern_file(const char *path, int pages, uint32_t (*seed)(int), int mode)
{
	static uint8_t page[PAGE];
	int fd, i;

	unlink(path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, mode);
	for (i = 0; i < pages; i++) {
		pattern_fill(page, PAGE, seed(i));
		write_all(fd, page, PAGE);
	}
	return fd;
}

static uint32_t file_seed(int p) { return FILE_SEED(p); }

static __attribute__((noreturn)) void child(uint32_t policy, int copy_all)
{
	static uint8_t page[PAGE];
	struct spice_restore *req;
	int fd_data, fd_shm, fd_exe, i;
	uint32_t k;
	size_t len;
	long ret;

	memset(&G, 0, sizeof(G));
	G.policy = policy;
	G.copy_all = copy_all;
	G.fpu = 1;
	snprintf(G.pages_path, sizeof(G.pages_path), "/tmp/spice-pages-%u.img", policy);
	snprintf(G.canary, sizeof(G.canary), "spice-canary-0123456789");
	G.heap_probe = malloc(PAGE);
	pattern_fill(G.heap_probe, PAGE, 4242);
	G.fs_base = get_fs_base();
	G.blocked = (1ULL << (SIGUSR2 - 1)) | (1ULL << (SIGWINCH - 1));

	unlink(G.pages_path);
	pages_out = open(G.pages_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	G.pages_fd = open(G.pages_path, O_RDONLY);
	fd_data = make_pattern_file("/tmp/spice-file", 4, file_seed, 0644);
	fd_shm = memfd_create("spice-shm", 0);
	for (i = 0; i < 3; i++) {
		pattern_fill(page, PAGE, SHM_SEED(i));
		write_all(fd_shm, page, PAGE);
	}
	unlink("/tmp/spice-exe");
	fd_exe = open("/tmp/spice-exe", O_RDWR | O_CREAT | O_TRUNC, 0755);
	write_all(fd_exe, "#!/bin/true\n", 12);
	close(fd_exe);
	fd_exe = open("/tmp/spice-exe", O_RDONLY);
	G.data_fd = fd_data;
	G.memfd = fd_shm;
	G.exe_fd = fd_exe;

	rb_init(&R);
	f_pages = rb_file(&R, G.pages_fd, SPICE_FILE_PAGES, SPICE_FILEF_CLOSE);
	rb_keep_vdso(&R);

	/* test VMAs and their present pages */
	for (i = 0; i < NV; i++) {
		uint32_t kind = T[i].shared ? SPICE_VMA_FILE_SHARED : SPICE_VMA_ANON_PRIVATE;
		uint32_t flags = T[i].shared ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS;
		int file = -1;
		uint64_t pgoff = 0;
		struct spice_vma *v;

		if (i == V_FPRIV) {
			kind = SPICE_VMA_FILE_PRIVATE;
			flags = MAP_PRIVATE;
			file = rb_file(&R, fd_data, SPICE_FILE_MAP, 0);
			pgoff = 1;
		} else if (i == V_FSHR) {
			file = rb_file(&R, fd_data, SPICE_FILE_MAP, 0);
		} else if (i == V_SHM) {
			kind = SPICE_VMA_ANON_SHARED;
			flags |= MAP_ANONYMOUS;
			file = rb_file(&R, fd_shm, SPICE_FILE_MEMFD, 0);
		}
		v = rb_vma(&R, T[i].start, T[i].start + T[i].npages * PAGE, T[i].prot, flags,
			   kind, file, pgoff);
		if (i == V_COPY || (copy_all && !T[i].shared))
			v->vflags = SPICE_VMAF_COPY;
	}
	for (k = 0; k < ARRAY_LEN(SRC); k++) {
		uint64_t off = pages_off;
		uint32_t p;

		for (p = SRC[k].first; p < SRC[k].first + SRC[k].n; p++) {
			pattern_fill(page, PAGE, SEED(SRC[k].v, p));
			if (SRC[k].v == V_EXEC) {
				memset(page, 0xcc, PAGE);
				memcpy(page, exec_blob, sizeof(exec_blob));
			} else if (SRC[k].v == V_ARGS) {
				memset(page, 0, PAGE);
				memcpy(page, ARGS, sizeof(ARGS) - 1);
				memcpy(page + 0x100, ENVS, sizeof(ENVS) - 1);
			} else if (SRC[k].v == V_RSEQ) {
				struct rseq *rs = (struct rseq *)page;

				memset(page, 0, PAGE);
				rs->cpu_id_start = 77;
				rs->cpu_id = 77;
			}
			add_pages(page, 1);
		}
		rb_src(&R, T[SRC[k].v].start + SRC[k].first * PAGE, SRC[k].n, off, f_pages);
	}
	/* working set: pages 0-3 read, 16-19 written */
	rb_ws(&R, T[V_PF].start, 4, 0);
	rb_ws(&R, T[V_PF].start + 16 * PAGE, 4, SPICE_WS_WRITE);

	/* mm fields */
	G.mm.start_code = 0x401000;
	G.mm.end_code = 0x402000;
	G.mm.start_data = T[V_ANON].start;
	G.mm.end_data = T[V_ANON].start + PAGE;
	G.mm.start_brk = TB + 0xe00000;
	G.mm.brk = TB + 0xe02000;
	G.mm.start_stack = T[V_STACK].start + 16 * PAGE - 8;
	G.mm.arg_start = T[V_ARGS].start;
	G.mm.arg_end = T[V_ARGS].start + sizeof(ARGS) - 1;
	G.mm.env_start = T[V_ARGS].start + 0x100;
	G.mm.env_end = T[V_ARGS].start + 0x100 + sizeof(ENVS) - 1;
	G.mm.auxv_words = 6;
	G.mm.auxv[0] = AT_PAGESZ;
	G.mm.auxv[1] = PAGE;
	G.mm.auxv[2] = AT_UID;
	G.mm.auxv[3] = 4321;
	G.mm.exe_file = rb_file(&R, fd_exe, SPICE_FILE_EXE, 0);

	/* our own memory, dumped last so that G is final */
	dump_self();
	qsort(R.vmas, R.nvmas, sizeof(R.vmas[0]), cmp_vma);
	qsort(R.srcs, R.nsrcs, sizeof(R.srcs[0]), cmp_src);

	R.hdr.flags = SPICE_RF_REGS | SPICE_RF_FPU | SPICE_RF_SIGMASK | SPICE_RF_MM;
	R.hdr.prefault = policy;
	if (policy == SPICE_PREFAULT_NONE)
		R.nws = 0;
	R.hdr.mm = G.mm;
	R.hdr.task.blocked = G.blocked;
	R.hdr.task.sigaction_mask = (1ULL << (SIGUSR1 - 1)) | (1ULL << (SIGSEGV - 1));
	R.hdr.task.act[SIGUSR1 - 1] = (struct spice_sigaction){
		(uint64_t)usr1, SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
		(uint64_t)spice_sigreturn, 1ULL << (SIGUSR2 - 1) };
	R.hdr.task.act[SIGSEGV - 1] = (struct spice_sigaction){
		(uint64_t)segv, SA_SIGINFO | SA_NODEFER | SA_RESTORER,
		(uint64_t)spice_sigreturn, 0 };
	R.hdr.task.ss_sp = T[V_ALT].start;
	R.hdr.task.ss_size = 4 * PAGE;
	R.hdr.task.ss_flags = SS_AUTODISARM;
	R.hdr.task.clear_tid_addr = T[V_ARGS].start + 0x800;
	R.hdr.task.robust_list = T[V_ARGS].start + 0x900;
	R.hdr.task.robust_list_len = sizeof(struct robust_list_head);
	R.hdr.task.rseq = T[V_RSEQ].start;
	R.hdr.task.rseq_len = sizeof(struct rseq);
	R.hdr.task.rseq_sig = RSEQ_SIG;

	{
		uint64_t *r = (uint64_t *)&R.hdr.regs;

		for (i = 0; i <= 15; i++)	/* r15 .. orig_ax */
			r[i] = XREG(i);
	}
	R.hdr.regs.ip = (uint64_t)spice_entry;
	R.hdr.regs.sp = T[V_STACK].start + 16 * PAGE - 256;
	R.hdr.regs.flags = EXP_FLAGS;
	R.hdr.regs.cs = 0x33;
	R.hdr.regs.ss = 0x2b;
	R.hdr.regs.fs_base = G.fs_base;
	R.hdr.regs.gs_base = GS_BASE;

	R.xsave_len = capture_xsave(R.xsave, g_ver.xsave_size < 576 ? 576 : g_ver.xsave_size,
				    g_ver.xfeatures);
	*(uint16_t *)(R.xsave + 0) = EXP_FCW;
	*(uint32_t *)(R.xsave + 24) = EXP_MXCSR;
	for (i = 0; i < 16; i++)
		for (k = 0; k < 16; k++)
			R.xsave[160 + i * 16 + k] = (uint8_t)((i * 16 + k) ^ 0xa5);
	*(uint64_t *)(R.xsave + 512) |= 3;

	close(pages_out);
	req = rb_build(&R, &len);
	ret = ioctl(g_dev, SPICE_IOC_RESTORE, req);
	printf("child: SPICE_IOC_RESTORE returned %ld errno=%d (%s) at table %u entry %u\n", ret,
	       errno, strerror(errno), req->err_table, req->err_index);
	fflush(stdout);
	_exit(3);
}

void test_restore(uint32_t policy, int copy_all)
{
	long ok0 = read_stat("restores_ok"), map0 = read_stat("pages_mapped");
	long pf0 = read_stat("pages_prefaulted"), cow0 = read_stat("pages_precow");
	long cp0 = read_stat("pages_copied");
	int st = 0;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (!pid)
		child(policy, copy_all);
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == RESTORED_OK,
	      "restore policy=%u copy_all=%d: child status 0x%x", policy, copy_all, st);
	CHECK(read_stat("restores_ok") == ok0 + 1, "restores_ok counter");
	if (copy_all) {
		CHECK(read_stat("pages_mapped") == map0, "copy mode maps nothing from the image");
		CHECK(read_stat("pages_copied") - cp0 >= 64 + 16 + 6, "copy mode copies all sources");
	} else {
		CHECK(read_stat("pages_mapped") - map0 >= 16 + 64 + 4, "pages_mapped delta %ld",
		      read_stat("pages_mapped") - map0);
		CHECK(read_stat("pages_copied") - cp0 >= 6, "V_COPY pages copied");
	}
	switch (policy) {
	case SPICE_PREFAULT_NONE:
		CHECK(read_stat("pages_prefaulted") == pf0 && read_stat("pages_precow") == cow0,
		      "policy none prefaults nothing");
		break;
	case SPICE_PREFAULT_WS:
		CHECK(read_stat("pages_prefaulted") - pf0 == 4, "ws prefaulted %ld",
		      read_stat("pages_prefaulted") - pf0);
		CHECK(read_stat("pages_precow") - cow0 == 4, "ws pre-COW");
		break;
	default:
		CHECK(read_stat("pages_prefaulted") - pf0 >= 64 + 4, "all: every source page");
		CHECK(read_stat("pages_precow") - cow0 == 4, "all: pre-COW of written pages");
	}
	printf("%s restore policy=%u copy_all=%d (last restore %ld us: teardown %ld, build %ld, prefault %ld)\n",
	       WIFEXITED(st) && WEXITSTATUS(st) == RESTORED_OK ? "ok  " : "FAIL", policy, copy_all,
	       read_stat("ns_last") / 1000, read_stat("ns_last_teardown") / 1000,
	       read_stat("ns_last_build") / 1000, read_stat("ns_last_prefault") / 1000);
}
