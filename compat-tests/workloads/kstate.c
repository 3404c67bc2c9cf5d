/* SPDX-License-Identifier: MIT */
/*
 * kstate: a process whose kernel-held state, not its memory, must survive a checkpoint/restore.
 *
 *   kstate OUTFILE          (run in its own directory: creates kdir/ and kfifo there)
 *
 * Set up once, then checked every ~100 ms (a FAIL line and exit 1 on any difference):
 *  - signals: a SIGUSR1 handler (SA_SIGINFO|SA_RESTART|SA_ONSTACK, mask {SIGUSR2}), SIGUSR2
 *    ignored, SIGRTMIN+3 blocked with one queued instance carrying a value (must stay pending),
 *    an alternate signal stack the handler must run on;
 *  - timers: ITIMER_REAL every 50 ms (SIGALRM counter must keep growing) and a POSIX timer
 *    (CLOCK_MONOTONIC, SIGUSR1 with a sigval, every 70 ms; its counter must keep growing);
 *  - fs/creds/limits: umask 027, cwd kdir/ and an open directory fd on it, RLIMIT_NOFILE 900/1000,
 *    RLIMIT_CORE 0, personality ADDR_NO_RANDOMIZE (compared from outside only: CRIU 4.2.1's own
 *    restore drops it), nice 5, supplementary groups changed (not the gids:
 *    without CAP_SYS_RESOURCE, as here, a dumper could not read the rlimits of another gid),
 *    CAP_SYS_BOOT dropped from the bounding set, the process name;
 *  - memory attributes: a page made read-only and one PROT_NONE inside a patterned mapping, a
 *    mapping with MADV_DONTFORK|MADV_DONTDUMP (checked in /proc/self/smaps);
 *  - queued data: 16 bytes waiting in a FIFO and in a unix socket pair (read, compared, re-queued);
 *  - a second thread with its own signal mask, alternate stack and name, checking them too.
 * Line: tick=N role=main pid=P token=T mem=C alrm=A tmr=T thr=K
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <grp.h>

#define REGION_PAGES 4
#define ALT_SIZE (64 * 1024)
#define QLEN 16
#define CAP_SYS_BOOT_NR 22

static volatile sig_atomic_t alrm_count, tmr_count, tmr_off_stack, thr_ticks;
static char *altstack, *thr_altstack;
static timer_t ptimer;
static uint64_t token;
static char fifo_data[QLEN], sk_data[QLEN];

static void on_alarm(int sig)
{
	(void)sig;
	alrm_count++;
}

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	stack_t ss;

	(void)sig;
	(void)uc;
	if (si->si_code == SI_TIMER && si->si_value.sival_ptr == (void *)&ptimer)
		tmr_count++;
	if (sigaltstack(NULL, &ss) == 0 && !(ss.ss_flags & SS_ONSTACK))
		tmr_off_stack++;
}

static void check_queue(int rfd, int wfd, const char *want, const char *what)
{
	char got[QLEN];
	int n = -1;

	if (ioctl(rfd, FIONREAD, &n) < 0 || n != QLEN)
		fail("%s holds %d bytes, expected %d", what, n, QLEN);
	if (read_all(rfd, got, QLEN) != QLEN || memcmp(got, want, QLEN))
		fail("%s data changed", what);
	if (write_all(wfd, got, QLEN) != QLEN)
		fail("%s: re-queue: %s", what, strerror(errno));
}

static int proc_flag(const char *field, unsigned long addr, const char *flag)
{
	char line[512], key[64];
	FILE *f = fopen("/proc/self/smaps", "r");
	int in = 0, found = 0;

	if (!f)
		fail("smaps: %s", strerror(errno));
	snprintf(key, sizeof(key), "%lx-", addr);
	while (fgets(line, sizeof(line), f)) {
		if (strchr(line, '-') && strchr(line, ' ') && line[0] != ' ' && strncmp(line, field, strlen(field)))
			in = !strncmp(line, key, strlen(key));
		if (in && !strncmp(line, field, strlen(field)) && strstr(line, flag))
			found = 1;
	}
	fclose(f);
	return found;
}

static char perms_of(unsigned long addr, int i)
{
	char line[512], key[64];
	FILE *f = fopen("/proc/self/maps", "r");
	char p = '?';

	if (!f)
		fail("maps: %s", strerror(errno));
	snprintf(key, sizeof(key), "%lx-", addr);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)))
			p = strchr(line, ' ')[1 + i];
	fclose(f);
	return p;
}

static void check_thread_state(const char *who, sigset_t *want_mask, char *want_alt, const char *want_name)
{
	sigset_t cur;
	stack_t ss;
	char name[17] = { 0 };

	pthread_sigmask(SIG_SETMASK, NULL, &cur);
	for (int s = 1; s < SIGRTMAX; s++)
		if (sigismember(&cur, s) != sigismember(want_mask, s))
			fail("%s: signal %d %s blocked", who, s, sigismember(&cur, s) ? "is" : "is not");
	if (sigaltstack(NULL, &ss) || ss.ss_sp != want_alt || ss.ss_size != ALT_SIZE)
		fail("%s: alternate stack %p/%zu, expected %p/%d", who, ss.ss_sp, ss.ss_size, (void *)want_alt, ALT_SIZE);
	prctl(PR_GET_NAME, name);
	if (strcmp(name, want_name))
		fail("%s: name %s, expected %s", who, name, want_name);
}

static sigset_t thr_mask;

static void *thread_main(void *arg)
{
	stack_t ss = { .ss_sp = thr_altstack, .ss_size = ALT_SIZE };

	(void)arg;
	sigemptyset(&thr_mask);
	sigaddset(&thr_mask, SIGALRM);
	sigaddset(&thr_mask, SIGUSR1);
	sigaddset(&thr_mask, SIGRTMIN + 3);
	sigaddset(&thr_mask, SIGTERM);
	pthread_sigmask(SIG_SETMASK, &thr_mask, NULL);
	if (sigaltstack(&ss, NULL))
		fail("thread sigaltstack: %s", strerror(errno));
	prctl(PR_SET_NAME, "kstate-thr");
	for (;;) {
		check_thread_state("thread", &thr_mask, thr_altstack, "kstate-thr");
		thr_ticks++;
		sleep_ms(30);
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

	/* signals */
	struct sigaction sa = { .sa_sigaction = on_usr1, .sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK };
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	if (sigaction(SIGUSR1, &sa, NULL))
		fail("sigaction: %s", strerror(errno));
	struct sigaction al = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	sigemptyset(&al.sa_mask);
	sigaction(SIGALRM, &al, NULL);
	signal(SIGUSR2, SIG_IGN);
	sigset_t main_mask;
	sigemptyset(&main_mask);
	sigaddset(&main_mask, SIGRTMIN + 3);
	sigprocmask(SIG_SETMASK, &main_mask, NULL);
	union sigval qv = { .sival_int = (int)(token & 0x7fffffff) };
	if (sigqueue(getpid(), SIGRTMIN + 3, qv))
		fail("sigqueue: %s", strerror(errno));
	altstack = malloc(ALT_SIZE);
	thr_altstack = malloc(ALT_SIZE);
	stack_t ss = { .ss_sp = altstack, .ss_size = ALT_SIZE };
	if (sigaltstack(&ss, NULL))
		fail("sigaltstack: %s", strerror(errno));

	/* fs, creds, limits */
	umask(027);
	mkdir("kdir", 0755);
	unlink("kfifo");
	if (mkfifo("kfifo", 0600))
		fail("mkfifo: %s", strerror(errno));
	int fifo = open("kfifo", O_RDWR | O_CLOEXEC);
	if (fifo < 0 || chdir("kdir"))
		fail("fifo/chdir: %s", strerror(errno));
	int dirfd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct stat dst;
	if (dirfd < 0 || fstat(dirfd, &dst))
		fail("dirfd: %s", strerror(errno));
	struct rlimit nofile = { 900, 1000 }, core = { 0, RLIM_INFINITY };
	if (setrlimit(RLIMIT_NOFILE, &nofile) || setrlimit(RLIMIT_CORE, &core))
		fail("setrlimit: %s", strerror(errno));
	if (personality(PER_LINUX | ADDR_NO_RANDOMIZE) < 0)
		fail("personality: %s", strerror(errno));
	if (setpriority(PRIO_PROCESS, 0, 5))
		fail("setpriority: %s", strerror(errno));
	gid_t groups[] = { 4242, 4343 };
	if (getuid() == 0 && setgroups(2, groups))
		fail("creds: %s", strerror(errno));
	if (getuid() == 0 && prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT_NR, 0, 0, 0))
		fail("capbset: %s", strerror(errno));
	prctl(PR_SET_NAME, "kstate-main");

	/* memory attributes */
	long pg = sysconf(_SC_PAGESIZE);
	char *region = mmap(NULL, REGION_PAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *dontfork = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED || dontfork == MAP_FAILED)
		fail("mmap: %s", strerror(errno));
	pattern_fill(region, REGION_PAGES * pg, token);
	pattern_fill(dontfork, 2 * pg, token + 1);
	if (mprotect(region + pg, pg, PROT_READ) || mprotect(region + 2 * pg, pg, PROT_NONE))
		fail("mprotect: %s", strerror(errno));
	if (madvise(dontfork, 2 * pg, MADV_DONTFORK) || madvise(dontfork, 2 * pg, MADV_DONTDUMP))
		fail("madvise: %s", strerror(errno));

	/* queued data */
	int sk[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sk))
		fail("socketpair: %s", strerror(errno));
	snprintf(fifo_data, QLEN, "F%014lx", (unsigned long)(token >> 8));
	snprintf(sk_data, QLEN, "S%014lx", (unsigned long)(token >> 4));
	if (write_all(fifo, fifo_data, QLEN) != QLEN || write_all(sk[1], sk_data, QLEN) != QLEN)
		fail("queue: %s", strerror(errno));

	/* timers */
	struct itimerval it = { { 0, 50000 }, { 0, 50000 } };
	if (setitimer(ITIMER_REAL, &it, NULL))
		fail("setitimer: %s", strerror(errno));
	struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1 };
	sev.sigev_value.sival_ptr = &ptimer;
	struct itimerspec its = { { 0, 70000000 }, { 0, 70000000 } };
	if (timer_create(CLOCK_MONOTONIC, &sev, &ptimer) || timer_settime(ptimer, 0, &its, NULL))
		fail("posix timer: %s", strerror(errno));

	pthread_t thr;
	if (pthread_create(&thr, NULL, thread_main, NULL))
		fail("pthread_create failed");

	sigset_t want_pending;
	sigemptyset(&want_pending);
	sigaddset(&want_pending, SIGRTMIN + 3);
	for (uint64_t tick = 1;; tick++) {
		struct sigaction cur;
		if (sigaction(SIGUSR1, NULL, &cur) || cur.sa_sigaction != on_usr1 ||
		    (cur.sa_flags & (SA_SIGINFO | SA_RESTART | SA_ONSTACK)) != (SA_SIGINFO | SA_RESTART | SA_ONSTACK) ||
		    !sigismember(&cur.sa_mask, SIGUSR2) || sigismember(&cur.sa_mask, SIGTERM))
			fail("SIGUSR1 disposition changed");
		if (sigaction(SIGUSR2, NULL, &cur) || cur.sa_handler != SIG_IGN)
			fail("SIGUSR2 is no longer ignored");
		sigset_t pend;
		sigpending(&pend);
		if (!sigismember(&pend, SIGRTMIN + 3))
			fail("queued SIGRTMIN+3 is no longer pending");
		check_thread_state("main", &main_mask, altstack, "kstate-main");
		if (tmr_off_stack)
			fail("the SIGUSR1 handler ran off the alternate stack");
		struct itimerval cit;
		getitimer(ITIMER_REAL, &cit);
		if (cit.it_interval.tv_sec != 0 || cit.it_interval.tv_usec != 50000)
			fail("itimer interval %ld.%06ld", (long)cit.it_interval.tv_sec, (long)cit.it_interval.tv_usec);
		struct itimerspec cts;
		if (timer_gettime(ptimer, &cts) || cts.it_interval.tv_nsec != 70000000)
			fail("posix timer interval changed: %s", strerror(errno));
		mode_t m = umask(027);
		if (m != 027)
			fail("umask %03o", m);
		struct stat now;
		char cwd[4096];
		if (!getcwd(cwd, sizeof(cwd)) || strcmp(strrchr(cwd, '/'), "/kdir") || stat(".", &now) ||
		    now.st_ino != dst.st_ino || fstat(dirfd, &now) || now.st_ino != dst.st_ino)
			fail("cwd or directory fd changed");
		struct rlimit rl;
		getrlimit(RLIMIT_NOFILE, &rl);
		if (rl.rlim_cur != 900 || rl.rlim_max != 1000)
			fail("RLIMIT_NOFILE %lu/%lu", (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max);
		getrlimit(RLIMIT_CORE, &rl);
		if (rl.rlim_cur != 0)
			fail("RLIMIT_CORE %lu", (unsigned long)rl.rlim_cur);
		errno = 0;
		if (getpriority(PRIO_PROCESS, 0) != 5 || errno)
			fail("nice %d", getpriority(PRIO_PROCESS, 0));
		gid_t g[8];
		int ng = getgroups(8, g);
		if (getuid() == 0 && (ng != 2 || g[0] != 4242 || g[1] != 4343))
			fail("supplementary groups changed");
		if (getuid() == 0 && prctl(PR_CAPBSET_READ, CAP_SYS_BOOT_NR, 0, 0, 0) != 0)
			fail("CAP_SYS_BOOT is back in the bounding set");
		if (perms_of((unsigned long)region, 0) != 'r' || perms_of((unsigned long)region + pg, 1) != '-' ||
		    perms_of((unsigned long)region + 2 * pg, 0) != '-' || perms_of((unsigned long)region + 3 * pg, 1) != 'w')
			fail("page protections changed");
		if (!proc_flag("VmFlags", (unsigned long)dontfork, " dc") || !proc_flag("VmFlags", (unsigned long)dontfork, " dd"))
			fail("MADV_DONTFORK/MADV_DONTDUMP lost");
		if (pattern_check(region, 2 * pg, token) >= 0 || pattern_check(dontfork, 2 * pg, token + 1) >= 0)
			fail("memory contents changed");
		check_queue(fifo, fifo, fifo_data, "fifo");
		check_queue(sk[0], sk[1], sk_data, "socket pair");
		emit("tick=%lu role=main pid=%d token=%016lx mem=%016lx alrm=%ld tmr=%ld thr=%ld", (unsigned long)tick,
		     (int)getpid(), (unsigned long)token, (unsigned long)checksum(region, 2 * pg),
		     (long)alrm_count, (long)tmr_count, (long)thr_ticks);
		sleep_ms(100);
	}
}
