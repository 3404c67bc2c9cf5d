// SPDX-License-Identifier: GPL-2.0
/*
 * spice: the per-task part of a restore: caller checks, FPU/xsave state,
 * mm fields and exe file, signal state, user pointers the kernel keeps
 * (rseq, clear_child_tid, robust list) and the register state the ioctl
 * returns into.
 */
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/fdtable.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/task_stack.h>
#include <linux/signal.h>
#include <linux/rseq.h>
#include <linux/compat.h>
#include <linux/uaccess.h>
#include <linux/task_work.h>
#include <asm/fpu/api.h>
#include <asm/fpu/types.h>
#include <asm/fsgsbase.h>
#include <asm/pkru.h>
#include <asm/segment.h>
#include <asm/sighandling.h>
#include <asm/msr.h>
#include "spice_internal.h"

u32 spice_xsave_size(void)
{
	return current->thread.fpu.fpstate->user_size;
}

/* without XSAVE the kernel keeps FXSAVE state: x87 and SSE only */
static u64 user_xfeatures(const struct fpstate *fps)
{
	if (!cpu_feature_enabled(X86_FEATURE_XSAVE))
		return XFEATURE_MASK_FPSSE;
	return fps->user_xfeatures;
}

u64 spice_xfeatures(void)
{
	return user_xfeatures(current->thread.fpu.fpstate);
}

int spice_check_caller(struct spice_ctx *c)
{
	struct mm_struct *mm = current->mm;

	c->err_table = SPICE_ERR_CALLER;
	c->err_index = U32_MAX;
	if (!mm || current->flags & PF_KTHREAD)
		return -EINVAL;
	if (in_compat_syscall() || test_thread_flag(TIF_ADDR32) ||
	    !user_64bit_mode(current_pt_regs()))
		return -EINVAL;
	/* nobody else may run on (or hold a user of) this mm */
	if (get_nr_threads(current) != 1 || atomic_read(&mm->mm_users) != 1)
		return -EBUSY;
	return 0;
}

static u64 xsave_features(const struct spice_ctx *c)
{
	return ((const struct xregs_state *)c->xbuf)->header.xfeatures;
}

/*
 * Validate the xsave image on a scratch fpstate with the kernel's own
 * ptrace/KVM uabi importer (which checks the header, reserved bytes and
 * MXCSR before writing anything).
 */
int spice_fpu_check(struct spice_ctx *c)
{
	struct fpstate *fps = current->thread.fpu.fpstate;
	struct fpu_guest g = {};
	u32 pkru = 0;
	int ret;

	if (!(c->req->flags & SPICE_RF_FPU))
		return 0;
	c->err_table = SPICE_ERR_XSAVE;
	c->err_index = 0;
	if (xsave_features(c) & (fps->xfd | ~user_xfeatures(fps)))
		return -EINVAL;
	if (!fpu_alloc_guest_fpstate(&g))
		return -ENOMEM;
	if (c->xbuf_size < g.fpstate->user_size)
		ret = -EINVAL;
	else
		ret = fpu_copy_uabi_to_guest_fpstate(&g, c->xbuf,
						     fps->user_xfeatures, &pkru);
	fpu_free_guest_fpstate(&g);
	return ret;
}

/*
 * Install the xsave image into current's fpstate.  kernel_fpu_begin()
 * saves the live registers to the fpstate and sets TIF_NEED_FPU_LOAD, so
 * the registers are reloaded from our image on the way back to user mode.
 * Nothing is written when the importer rejects the image.
 */
static int install_fpu(struct spice_ctx *c)
{
	struct fpstate *fps = current->thread.fpu.fpstate;
	struct fpu_guest g = { .fpstate = fps };
	u64 xf = xsave_features(c);
	u32 pkru = 0;
	int ret;

	if (xf & (fps->xfd | ~user_xfeatures(fps)) ||
	    c->xbuf_size < fps->user_size)
		return -EINVAL;
	kernel_fpu_begin();
	ret = fpu_copy_uabi_to_guest_fpstate(&g, c->xbuf, fps->user_xfeatures,
					     &pkru);
	kernel_fpu_end();
	if (!ret && cpu_feature_enabled(X86_FEATURE_OSPKE))
		write_pkru(xf & XFEATURE_MASK_PKRU ? pkru : 0);
	return ret;
}

/* Fallible steps that still leave the caller as it was when they fail. */
int spice_prepare(struct spice_ctx *c)
{
	int ret;

	if (c->exe && c->req->flags & SPICE_RF_MM) {
		if (exe_file_deny_write_access(c->exe))
			return -ETXTBSY;
		c->exe_denied = true;
	}
	if (c->req->flags & SPICE_RF_FPU) {
		ret = install_fpu(c);
		if (ret) {
			spice_unprepare(c);
			return ret;
		}
	}
	return 0;
}

void spice_unprepare(struct spice_ctx *c)
{
	if (c->exe_denied) {
		exe_file_allow_write_access(c->exe);
		c->exe_denied = false;
	}
}

/*
 * The kernel keeps user pointers into the old address space; they must not
 * be followed into the new one (rseq cpu_id updates, CLONE_CHILD_CLEARTID
 * on exit, robust futex walk on exit).
 */
void spice_forget_user_pointers(void)
{
	current->rseq = NULL;
	current->rseq_sig = 0;
	current->clear_child_tid = NULL;
#ifdef CONFIG_FUTEX
	current->robust_list = NULL;
#ifdef CONFIG_COMPAT
	current->compat_robust_list = NULL;
#endif
#endif
	current->sas_ss_sp = 0;
	current->sas_ss_size = 0;
	current->sas_ss_flags = SS_DISABLE;
}

static void install_mm(struct spice_ctx *c)
{
	const struct spice_mm *m = &c->req->mm;
	struct mm_struct *mm = current->mm;
	struct file *old;

	mmap_write_lock(mm);
	spin_lock(&mm->arg_lock);
	mm->start_code = m->start_code;
	mm->end_code = m->end_code;
	mm->start_data = m->start_data;
	mm->end_data = m->end_data;
	mm->start_brk = m->start_brk;
	mm->brk = m->brk;
	mm->start_stack = m->start_stack;
	mm->arg_start = m->arg_start;
	mm->arg_end = m->arg_end;
	mm->env_start = m->env_start;
	mm->env_end = m->env_end;
	memset(mm->saved_auxv, 0, sizeof(mm->saved_auxv));
	memcpy(mm->saved_auxv, m->auxv, m->auxv_words * sizeof(u64));
	spin_unlock(&mm->arg_lock);
	mmap_write_unlock(mm);

	if (!c->exe)
		return;
	/* as replace_mm_exe_file(); write access was denied in prepare */
	get_file(c->exe);
	c->exe_denied = false;
	old = xchg(&mm->exe_file, c->exe);
	if (old) {
		mmap_read_lock(mm);
		exe_file_allow_write_access(old);
		fput(old);
		mmap_read_unlock(mm);
	}
}

static void install_signals(const struct spice_ctx *c)
{
	const struct spice_task *t = &c->req->task;
	struct sighand_struct *sh = current->sighand;
	const u64 kill_stop = sigmask(SIGKILL) | sigmask(SIGSTOP);
	sigset_t set;
	int i;

	spin_lock_irq(&sh->siglock);
	for (i = 0; i < SPICE_NSIG; i++) {
		struct k_sigaction *k = &sh->action[i];
		const struct spice_sigaction *a = &t->act[i];

		if (!(t->sigaction_mask & BIT_ULL(i)) ||
		    i + 1 == SIGKILL || i + 1 == SIGSTOP)
			continue;
		k->sa.sa_handler = (__sighandler_t)(uintptr_t)a->handler;
		k->sa.sa_flags = a->flags;
		k->sa.sa_restorer = (__sigrestore_t)(uintptr_t)a->restorer;
		k->sa.sa_mask.sig[0] = a->mask & ~kill_stop;
	}
	spin_unlock_irq(&sh->siglock);

	if (c->req->flags & SPICE_RF_SIGMASK) {
		set.sig[0] = t->blocked & ~kill_stop;
		sigprocmask(SIG_SETMASK, &set, NULL);
	}
	if (t->ss_flags != SS_DISABLE) {
		current->sas_ss_sp = t->ss_sp;
		current->sas_ss_size = t->ss_size;
		current->sas_ss_flags = t->ss_flags;
	}
}

static int install_user_pointers(const struct spice_ctx *c)
{
	const struct spice_task *t = &c->req->task;

	current->clear_child_tid = (int __user *)(uintptr_t)t->clear_tid_addr;
#ifdef CONFIG_FUTEX
	current->robust_list =
		(struct robust_list_head __user *)(uintptr_t)t->robust_list;
#endif
	if (t->rseq) {
		struct rseq __user *rs = (struct rseq __user *)(uintptr_t)t->rseq;
		u64 cs;

		/* as sys_rseq(): a registration starts outside any section */
		if (get_user(cs, &rs->rseq_cs))
			return -EFAULT;
		if (cs && put_user(0ULL, &rs->rseq_cs))
			return -EFAULT;
		current->rseq = rs;
		current->rseq_sig = t->rseq_sig;
		rseq_set_notify_resume(current);
	}
	return 0;
}

int spice_install_task(struct spice_ctx *c)
{
	if (c->req->flags & SPICE_RF_MM)
		install_mm(c);
	install_signals(c);
	return install_user_pointers(c);
}

/* the ioctl's return value becomes regs->ax, truncated to int */
struct spice_ax_fixup {
	struct callback_head cb;
	u64 ax;
};

static void spice_ax_fixup_fn(struct callback_head *cb)
{
	struct spice_ax_fixup *f = container_of(cb, struct spice_ax_fixup, cb);

	current_pt_regs()->ax = f->ax;
	kfree(f);
}

/* Returns the value the ioctl must return (the restored %rax). */
long spice_install_regs(struct spice_ctx *c)
{
	const struct spice_regs *r = &c->req->regs;
	struct pt_regs *regs = current_pt_regs();
	unsigned short sel;

	if (!(c->req->flags & SPICE_RF_REGS))
		return 0;

	preempt_disable();
	savesegment(fs, sel);
	if (sel)
		loadsegment(fs, 0);
	x86_fsbase_write_cpu(r->fs_base);
	current->thread.fsindex = 0;
	current->thread.fsbase = r->fs_base;
	savesegment(gs, sel);
	if (sel)
		load_gs_index(0);
	/* in the kernel the user GS base is the inactive one */
	wrmsrl(MSR_KERNEL_GS_BASE, r->gs_base);
	current->thread.gsindex = 0;
	current->thread.gsbase = r->gs_base;
	loadsegment(ds, r->ds);
	loadsegment(es, r->es);
	current->thread.ds = r->ds;
	current->thread.es = r->es;
	preempt_enable();

	regs->r15 = r->r15;
	regs->r14 = r->r14;
	regs->r13 = r->r13;
	regs->r12 = r->r12;
	regs->bp = r->bp;
	regs->bx = r->bx;
	regs->r11 = r->r11;
	regs->r10 = r->r10;
	regs->r9 = r->r9;
	regs->r8 = r->r8;
	regs->ax = r->ax;
	regs->cx = r->cx;
	regs->dx = r->dx;
	regs->si = r->si;
	regs->di = r->di;
	regs->orig_ax = -1;	/* not in a syscall: no restart handling */
	regs->ip = r->ip;
	regs->cs = __USER_CS;
	regs->flags = (regs->flags & ~FIX_EFLAGS) | (r->flags & FIX_EFLAGS);
	regs->sp = r->sp;
	regs->ss = __USER_DS;

	/*
	 * sys_ioctl() returns an int and turns -ENOIOCTLCMD into -ENOTTY:
	 * other values of %rax are installed on the way out to user mode.
	 */
	if ((long)r->ax != (long)(int)r->ax || (long)r->ax == -ENOIOCTLCMD) {
		struct spice_ax_fixup *f;

		f = kmalloc(sizeof(*f), GFP_KERNEL | __GFP_NOFAIL);
		f->ax = r->ax;
		init_task_work(&f->cb, spice_ax_fixup_fn);
		if (task_work_add(current, &f->cb, TWA_RESUME))
			kfree(f);
		return 0;
	}
	return (long)r->ax;
}

void spice_close_fds(struct spice_ctx *c)
{
	u32 i;

	for (i = 0; i < c->nfiles; i++)
		if (c->ufiles[i].flags & SPICE_FILEF_CLOSE)
			close_fd(c->ufiles[i].fd);
}
