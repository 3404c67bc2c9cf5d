// SPDX-License-Identifier: GPL-2.0
/*
 * Error paths: every validation failure returns its errno and leaves the
 * caller running unchanged (same maps, signal state, FS base, MXCSR), both
 * with SPICE_RF_DRY_RUN and for real; a failure after the teardown kills
 * only the caller.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sched.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "common.h"

#define TBL(h, t, T)	((T *)((char *)(h) + (h)->t.offset))
#define VMA(h, i)	(TBL(h, vmas, struct spice_vma)[i])
#define SRC(h, i)	(TBL(h, sources, struct spice_source)[i])
#define WS(h, i)	(TBL(h, ws, struct spice_ws)[i])
#define KEEP(h, i)	(TBL(h, keep, struct spice_range)[i])
#define FILEE(h, i)	(TBL(h, files, struct spice_file)[i])
#define XS(h)		((uint8_t *)(h) + (h)->xsave.offset)
#define KADDR		0xffff888000000000ULL
#define HIGH		0x800000000000ULL

struct extra {
	int dir, pipe_r, devnull, wronly, opath, noexec_exe;
	int xsave;
};

enum { CASE_BASE = __COUNTER__ + 1 };
#define C(desc, err, ...) \
	case __COUNTER__ - CASE_BASE: *name = desc; __VA_ARGS__; return err;

/* apply mutation k to a copy of the valid mini request; returns the errno */
static int mutate(int k, struct spice_restore *h, const struct extra *x, const char **name)
{
	switch (k) {
	C("magic", EINVAL, h->magic ^= 1)
	C("version", EPROTO, h->version = 2)
	C("hdr_size", EINVAL, h->hdr_size -= 8)
	C("total < header", EINVAL, h->total_size = 64)
	C("total too big", E2BIG, h->total_size = SPICE_MAX_TOTAL_SIZE + 8)
	C("total unaligned", EINVAL, h->total_size += 3)
	C("unknown flag", EINVAL, h->flags |= 1ULL << 40)
	C("prefault policy", EINVAL, h->prefault = 3)
	C("reserved0", EINVAL, h->reserved0 = 1)
	C("reserved[6]", EINVAL, h->reserved[6] = 1)
	C("vma entry_size", EINVAL, h->vmas.entry_size = 40)
	C("vma count > max", E2BIG, h->vmas.count = SPICE_MAX_VMAS + 1)
	C("sources offset unaligned", EINVAL, h->sources.offset += 4)
	C("sources offset in header", EINVAL, h->sources.offset = 8)
	C("ws table out of bounds", EINVAL, h->ws.count = 1000)
	C("table reserved", EINVAL, h->files.reserved = 1)
	C("keep count > max", E2BIG, h->keep.count = SPICE_MAX_KEEP + 1)
	C("xsave entry_size", EINVAL, h->xsave.entry_size = 2)
	C("empty table with offset", EINVAL, h->ws.count = 0)
	C("fd -1", EBADF, FILEE(h, 0).fd = -1)
	C("fd not open", EBADF, FILEE(h, 0).fd = 1000)
	C("file role", EINVAL, FILEE(h, 1).role = 9)
	C("file flags", EINVAL, FILEE(h, 1).flags = 2)
	C("file reserved", EINVAL, FILEE(h, 1).reserved = 1)
	C("pages fd is a directory", EBADFD, FILEE(h, 0).fd = x->dir)
	C("pages fd is a pipe", EBADFD, FILEE(h, 0).fd = x->pipe_r)
	C("map fd is /dev/null", EBADFD, FILEE(h, 1).fd = x->devnull)
	C("pages fd write-only", EACCES, FILEE(h, 0).fd = x->wronly)
	C("O_PATH fd", EBADF, FILEE(h, 1).fd = x->opath)
	C("exe not executable", EACCES, FILEE(h, 3).fd = x->noexec_exe)
	C("vma start unaligned", EINVAL, VMA(h, 1).start += 1)
	C("vma end <= start", EINVAL, VMA(h, 1).end = VMA(h, 1).start)
	C("vma end > TASK_SIZE", EINVAL, VMA(h, 5).end = HIGH + 4096)
	C("vma below min addr", EINVAL, VMA(h, 0).start = 0x1000)
	C("vma overlap", EINVAL, VMA(h, 1).start = VMA(h, 0).start)
	C("vma overlaps keep", EINVAL, KEEP(h, 0).start = VMA(h, 0).start;
	  KEEP(h, 0).end = VMA(h, 0).end)
	C("vma prot", EINVAL, VMA(h, 1).prot |= 8)
	C("vma MAP_HUGETLB", EINVAL, VMA(h, 1).flags |= 0x40000)
	C("vma MAP_POPULATE", EINVAL, VMA(h, 1).flags |= 0x8000)
	C("vma kind 0", EINVAL, VMA(h, 1).kind = 0)
	C("vma kind 5", EINVAL, VMA(h, 1).kind = 5)
	C("anon vma with file", EINVAL, VMA(h, 1).file = 0)
	C("anon vma with pgoff", EINVAL, VMA(h, 1).pgoff = 1)
	C("anon vma not MAP_ANONYMOUS", EINVAL, VMA(h, 1).flags &= ~0x20)
	C("file vma MAP_ANONYMOUS", EINVAL, VMA(h, 2).flags |= 0x20)
	C("file private vma MAP_SHARED", EINVAL, VMA(h, 2).flags = 1)
	C("file vma without file", EBADF, VMA(h, 2).file = -1)
	C("file vma file index", EBADF, VMA(h, 2).file = 99)
	C("file vma wrong role", EBADF, VMA(h, 2).file = 0)
	C("shared writable, read-only fd", EACCES, VMA(h, 3).prot |= 2)
	C("memfd too small", ENXIO, VMA(h, 4).end += 2 * 4096)
	C("file pgoff past EOF", ENXIO, VMA(h, 2).pgoff = 10)
	C("file pgoff overflow", EOVERFLOW, VMA(h, 2).pgoff = 1ULL << 52)
	C("file vma MAP_GROWSDOWN", EINVAL, VMA(h, 3).flags |= 0x100)
	C("vma vflags", EINVAL, VMA(h, 1).vflags = 2)
	C("vma reserved", EINVAL, VMA(h, 1).reserved = 1)
	C("src unaligned", EINVAL, SRC(h, 1).start += 8)
	C("src nr 0", EINVAL, SRC(h, 1).nr_pages = 0)
	C("src nr huge", EINVAL, SRC(h, 1).nr_pages = 1ULL << 40)
	C("src outside vmas", EINVAL, SRC(h, 1).start = VMA(h, 0).start + 0x8000)
	C("src spans vma end", EINVAL, SRC(h, 0).nr_pages = 2)
	C("src in shared vma", EINVAL, SRC(h, 3).start = VMA(h, 4).start)
	C("src offset unaligned", EINVAL, SRC(h, 1).offset += 1)
	C("src past EOF", ENXIO, SRC(h, 1).offset = 4 * 4096)
	C("src offset overflow", EINVAL, SRC(h, 1).offset = ~0ULL << 12)
	C("src file role", EBADF, SRC(h, 1).file = 1)
	C("src file index", EBADF, SRC(h, 1).file = 99)
	C("src file index negative", EBADF, SRC(h, 1).file = 0x80000000u)
	C("src unsorted", EINVAL, SRC(h, 1).start = VMA(h, 1).start + 0x2000;
	  SRC(h, 2).start = VMA(h, 1).start)
	C("src reserved", EINVAL, SRC(h, 1).reserved = 1)
	C("ws with policy none", EINVAL, h->prefault = SPICE_PREFAULT_NONE)
	C("ws outside vmas", EINVAL, WS(h, 1).start = VMA(h, 0).start + 0x8000)
	C("ws flags", EINVAL, WS(h, 1).flags = 2)
	C("ws nr 0", EINVAL, WS(h, 1).nr_pages = 0)
	C("ws reserved", EINVAL, WS(h, 1).reserved = 1)
	C("keep unaligned", EINVAL, KEEP(h, 0).start += 1)
	C("keep empty", EINVAL, KEEP(h, 0).end = KEEP(h, 0).start)
	C("keep unsorted", EINVAL, KEEP(h, 1).start = KEEP(h, 0).start;
	  KEEP(h, 1).end = KEEP(h, 0).end)
	C("keep > TASK_SIZE", EINVAL, KEEP(h, 1).end = HIGH + 4096)
	C("mm code order", EINVAL, h->mm.end_code = h->mm.start_code)
	C("mm brk order", EINVAL, h->mm.brk = h->mm.start_brk - 4096)
	C("mm arg order", EINVAL, h->mm.arg_end = h->mm.arg_start - 1)
	C("mm env > TASK_SIZE", EINVAL, h->mm.env_end = HIGH)
	C("mm stack below min", EINVAL, h->mm.start_stack = 0x1000)
	C("mm auxv odd", EINVAL, h->mm.auxv_words = 3)
	C("mm auxv too long", EINVAL, h->mm.auxv_words = SPICE_AUXV_WORDS + 2)
	C("mm auxv garbage", EINVAL, h->mm.auxv[10] = 1)
	C("mm exe role", EBADF, h->mm.exe_file = 0)
	C("altstack flags", EINVAL, h->task.ss_flags = 5; h->task.ss_size = 65536;
	  h->task.ss_sp = 0x10000)
	C("altstack too small", ENOMEM, h->task.ss_flags = 0; h->task.ss_size = 100;
	  h->task.ss_sp = 0x10000)
	C("altstack disabled with sp", EINVAL, h->task.ss_sp = 0x10000)
	C("robust list len", EINVAL, h->task.robust_list = 0x10000; h->task.robust_list_len = 8)
	C("robust len alone", EINVAL, h->task.robust_list_len = 24)
	C("rseq unaligned", EINVAL, h->task.rseq = 0x10004; h->task.rseq_len = 32)
	C("rseq len", EINVAL, h->task.rseq = 0x10000; h->task.rseq_len = 20)
	C("rseq sig alone", EINVAL, h->task.rseq_sig = 1)
	C("clear_tid kernel", EINVAL, h->task.clear_tid_addr = KADDR)
	C("task reserved", EINVAL, h->task.reserved0 = 1)
	C("SIGKILL handler", EINVAL, h->task.sigaction_mask |= 1ULL << 8;
	  h->task.act[8].handler = 0x10000)
	C("sigaction flags", EINVAL, h->task.act[SIGUSR1 - 1].flags |= 0x400)
	C("sigaction handler kernel", EINVAL, h->task.act[SIGUSR1 - 1].handler = KADDR)
	C("sigaction restorer kernel", EINVAL, h->task.act[SIGUSR1 - 1].restorer = KADDR)
	C("regs cs 32-bit", EINVAL, h->regs.cs = 0x23)
	C("regs ss", EINVAL, h->regs.ss = 0)
	C("regs ip high", EINVAL, h->regs.ip = HIGH)
	C("regs ip kernel", EINVAL, h->regs.ip = KADDR)
	C("regs sp kernel", EINVAL, h->regs.sp = KADDR)
	C("regs fs selector", EINVAL, h->regs.fs = 0x2b)
	C("regs ds selector", EINVAL, h->regs.ds = 0x10)
	C("regs fs_base kernel", EINVAL, h->regs.fs_base = KADDR)
	C("regs gs_base high", EINVAL, h->regs.gs_base = HIGH)
	C("no regs, caller not in keep", EINVAL, h->flags &= ~SPICE_RF_REGS)
	C("xsave too short", EINVAL, h->xsave.count = 100)
	C("xsave without FPU flag", EINVAL, h->flags &= ~SPICE_RF_FPU)
	C("xsave unknown xfeature", EINVAL, *(uint64_t *)(XS(h) + 512) |= 1ULL << 62)
	C("xsave mxcsr reserved", EINVAL, *(uint64_t *)(XS(h) + 512) |= 3;
	  *(uint32_t *)(XS(h) + 24) = 0xffff0000u)
	C("xsave xcomp_bv", x->xsave ? EINVAL : 0, *(uint64_t *)(XS(h) + 520) = 1ULL << 63)
	C("xsave header reserved", x->xsave ? EINVAL : 0, *(uint64_t *)(XS(h) + 536) = 1)
	C("valid request (dry run)", 0, (void)0)
	default:
		return -1;
	}
}

struct snap {
	char maps[16384];
	uint64_t blocked, fs_base;
	uint32_t mxcsr;
	struct spice_sigaction usr1;
};

static void take_snap(struct snap *s)
{
	read_file("/proc/self/maps", s->maps, sizeof(s->maps));
	rsys(SYS_rt_sigprocmask, SIG_BLOCK, 0, (long)&s->blocked, 8, 0, 0);
	rsys(SYS_rt_sigaction, SIGUSR1, 0, (long)&s->usr1, 8, 0, 0);
	s->fs_base = get_fs_base();
	__asm__ volatile("stmxcsr %0" : "=m"(s->mxcsr));
}

static int snap_equal(const struct snap *a, const struct snap *b)
{
	return !strcmp(a->maps, b->maps) && a->blocked == b->blocked &&
	       a->fs_base == b->fs_base && a->mxcsr == b->mxcsr &&
	       !memcmp(&a->usr1, &b->usr1, sizeof(a->usr1));
}

static struct mini M;
static struct snap S0, S1;

static void open_extra(struct extra *x)
{
	int p[2], fd;

	x->dir = open("/tmp", O_RDONLY | O_DIRECTORY);
	pipe(p);
	x->pipe_r = p[0];
	x->devnull = open("/dev/null", O_RDWR);
	x->wronly = open("/tmp/spice-mini-pages", O_WRONLY);
	x->opath = open("/tmp/spice-mini-data", O_PATH);
	unlink("/tmp/spice-noexec");
	fd = open("/tmp/spice-noexec", O_RDWR | O_CREAT, 0644);
	write_all(fd, "x", 1);
	close(fd);
	x->noexec_exe = open("/tmp/spice-noexec", O_RDONLY);
	x->xsave = cpu_has_xsave();
}

/* one ioctl; returns errno (0 = success) */
static int try_req(const struct spice_restore *h)
{
	return ioctl(g_dev, SPICE_IOC_RESTORE, h) ? errno : 0;
}

static void run_cases(int dry)
{
	struct spice_restore *base, *h;
	struct extra x;
	size_t len;
	int k, want, got, n = 0;
	const char *name;
	sigset_t set;
	struct sigaction sa = { .sa_handler = SIG_IGN };

	mini_build(&M, 1);
	open_extra(&x);
	base = rb_build(&M.rb, &len);
	h = malloc(len + 65536);
	/* a caller state the module must not touch */
	sigaction(SIGUSR1, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_SETMASK, &set, NULL);
	{
		uint32_t mx = 0x9f80;

		__asm__ volatile("ldmxcsr %0" : : "m"(mx));
	}
	for (k = 0;; k++) {
		memcpy(h, base, len);
		if (dry)
			h->flags |= SPICE_RF_DRY_RUN;
		want = mutate(k, h, &x, &name);
		if (want < 0)
			break;
		if (!dry && !want)
			continue;	/* valid for real would restore us away */
		take_snap(&S0);
		got = try_req(h);
		take_snap(&S1);
		CHECK(got == want, "%s case '%s': errno %d (%s), want %d", dry ? "dry" : "real",
		      name, got, strerror(got), want);
		CHECK(snap_equal(&S0, &S1), "%s case '%s' changed the caller", dry ? "dry" : "real",
		      name);
		n++;
	}
	/* exe opened for writing: refused when it would be installed */
	if (!dry) {
		int w = open("/tmp/spice-mini-exe", O_WRONLY);

		memcpy(h, base, len);
		take_snap(&S0);
		got = try_req(h);
		take_snap(&S1);
		CHECK(got == ETXTBSY, "exe open for write: errno %d", got);
		CHECK(snap_equal(&S0, &S1), "ETXTBSY case changed the caller");
		close(w);
		n++;
	}
	/* a too short user buffer: the copy faults */
	{
		char *pg = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0);
		struct spice_restore *e = (void *)(pg + 2 * PAGE - sizeof(*e));

		mprotect(pg + 2 * PAGE, PAGE, PROT_NONE);
		memcpy(e, base, sizeof(*e));
		e->total_size = sizeof(*e) + 4096;
		e->flags |= dry ? SPICE_RF_DRY_RUN : 0;
		CHECK(try_req(e) == EFAULT, "request crossing into a PROT_NONE page: EFAULT");
		e = (void *)(pg + 2 * PAGE - 64);
		CHECK(try_req(e) == EFAULT, "header crossing into a PROT_NONE page: EFAULT");
		munmap(pg, 3 * PAGE);
		n += 2;
	}
	printf("%s error cases: %d run\n", dry ? "dry-run" : "real", n);
	fflush(stdout);
	free(h);
	free(base);
}

static void *idle_thread(void *arg)
{
	(void)arg;
	pause();
	return NULL;
}

static void caller_cases(void)
{
	struct spice_restore *base;
	size_t len;
	pthread_t th;
	pid_t pid;
	int st;
	struct __user_cap_header_struct ch = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct cd[2];

	mini_build(&M, 0);
	base = rb_build(&M.rb, &len);
	CHECK(ioctl(g_dev, 0xBD99, 0) == -1 && errno == ENOTTY, "unknown ioctl: ENOTTY");
	CHECK(ioctl(g_dev, SPICE_IOC_RESTORE, NULL) == -1 && errno == EFAULT, "NULL request");
	CHECK(ioctl(g_dev, SPICE_IOC_VERSION, NULL) == -1 && errno == EFAULT, "NULL version");

	/* shared mm (vfork child): EBUSY */
	pid = vfork();
	if (!pid)
		_exit(ioctl(g_dev, SPICE_IOC_RESTORE, base) ? errno : 0);
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == EBUSY, "vfork child: status 0x%x", st);

	/* multi-threaded caller: EBUSY */
	pthread_create(&th, NULL, idle_thread, NULL);
	CHECK(try_req(base) == EBUSY, "multi-threaded caller: EBUSY");
	pthread_cancel(th);
	pthread_join(th, NULL);

	/* no CAP_CHECKPOINT_RESTORE / CAP_SYS_ADMIN: EPERM */
	pid = fork();
	if (!pid) {
		syscall(SYS_capget, &ch, cd);
		cd[0].effective &= ~(1u << CAP_SYS_ADMIN);
		cd[1].effective &= ~(1u << (CAP_CHECKPOINT_RESTORE - 32));
		syscall(SYS_capset, &ch, cd);
		_exit(ioctl(g_dev, SPICE_IOC_RESTORE, base) ? errno : 0);
	}
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == EPERM, "no capability: status 0x%x", st);
	free(base);
}

void test_errors(void)
{
	pid_t pid;
	int st, dry;
	long rej0 = read_stat("restores_rejected"), ok0 = read_stat("restores_ok");

	for (dry = 1; dry >= 0; dry--) {
		fflush(stdout);
		pid = fork();
		if (!pid) {
			run_cases(dry);
			_exit(0);
		}
		waitpid(pid, &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "%s error cases: child status 0x%x (it must survive every case)",
		      dry ? "dry-run" : "real", st);
	}
	pid = fork();
	if (!pid) {
		caller_cases();
		_exit(0);
	}
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "caller cases: status 0x%x", st);
	CHECK(read_stat("restores_ok") == ok0, "no restore succeeded in the error tests");
	CHECK(read_stat("restores_rejected") > rej0 + 100, "rejections counted");
}

/* Failures after the teardown kill the caller, and only the caller. */
void test_kill_after_teardown(void)
{
	long k0 = read_stat("restores_killed");
	int st, i;
	pid_t pid;

	for (i = 0; i < 2; i++) {
		fflush(stdout);
		pid = fork();
		if (!pid) {
			struct spice_restore *h;
			size_t len;

			mini_build(&M, 1);
			if (i == 0) {
				/* 64 GiB of private writable memory: mmap fails (overcommit) */
				struct spice_vma *v = &M.rb.vmas[M.rb.nvmas - 1];

				v->end = v->start + (64ULL << 30);
				h = rb_build(&M.rb, &len);
			} else {
				/* address-space limit: the first mmap after teardown fails */
				struct rlimit rl = { 4096, 4096 };

				h = rb_build(&M.rb, &len);
				setrlimit(RLIMIT_AS, &rl);
			}
			ioctl(g_dev, SPICE_IOC_RESTORE, h);
			_exit(5);	/* must not be reached: the caller is gone */
		}
		waitpid(pid, &st, 0);
		CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
		      "failure after teardown (%s): status 0x%x, want SIGKILL",
		      i ? "RLIMIT_AS" : "ENOMEM", st);
	}
	CHECK(read_stat("restores_killed") == k0 + 2, "restores_killed counter");
	printf("ok   failures after teardown kill only the caller\n");
}
