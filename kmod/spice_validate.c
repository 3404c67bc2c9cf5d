// SPDX-License-Identifier: GPL-2.0
/*
 * spice: copy a SPICE_IOC_RESTORE request into the kernel and validate every
 * field before anything of the caller is touched.  Nothing here has side
 * effects on the caller besides holding file references.
 */
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mount.h>
#include <linux/magic.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task_stack.h>
#include <linux/ptrace.h>
#include <linux/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/futex.h>
#include <linux/rseq.h>
#include <linux/overflow.h>
#include <asm/segment.h>
#include <asm/processor.h>
#include "spice_internal.h"

/* MAP_* bits a restored VMA may carry (CRIU vma_entry.flags). */
#define SPICE_MAP_TYPES		(MAP_SHARED | MAP_PRIVATE)
#define SPICE_MAP_MODIFIERS	(MAP_GROWSDOWN | MAP_NORESERVE | MAP_LOCKED | \
				 MAP_DENYWRITE | MAP_EXECUTABLE | MAP_STACK)
#define SPICE_MAP_ALLOWED	(SPICE_MAP_TYPES | MAP_ANONYMOUS | \
				 SPICE_MAP_MODIFIERS)
#define SPICE_PROT_ALLOWED	(PROT_READ | PROT_WRITE | PROT_EXEC)

static bool spice_noexec(const struct file *f)
{
	return (f->f_path.mnt->mnt_flags & MNT_NOEXEC) ||
	       (f->f_path.mnt->mnt_sb->s_iflags & SB_I_NOEXEC);
}

static bool page_range_ok(u64 start, u64 end)
{
	return PAGE_ALIGNED(start) && PAGE_ALIGNED(end) && start < end &&
	       start >= SPICE_MIN_ADDR && end <= TASK_SIZE;
}

static int load_table(struct spice_ctx *c, const struct spice_table *t,
		      u32 esize, u32 max, const void **out, u32 *count)
{
	u64 end;

	c->err_table = SPICE_ERR_FILES + (t - &c->req->files);
	c->err_index = U32_MAX;	/* the table descriptor itself */

	if (t->reserved)
		return -EINVAL;
	if (!t->count) {	/* empty: all zero, entry_size optional */
		*out = NULL;
		*count = 0;
		return t->offset || (t->entry_size && t->entry_size != esize) ?
		       -EINVAL : 0;
	}
	if (t->entry_size != esize)
		return -EINVAL;
	if (t->count > max)
		return -E2BIG;
	end = (u64)t->offset + (u64)t->count * esize;
	if (t->offset < sizeof(struct spice_restore) || t->offset % 8 ||
	    end > c->total)
		return -EINVAL;
	*out = (const u8 *)c->req + t->offset;
	*count = t->count;
	return 0;
}

int spice_req_load(struct spice_ctx *c, const void __user *uarg)
{
	struct spice_restore *hdr;
	const void *xs;
	u32 total, xlen;
	int ret;

	c->err_table = SPICE_ERR_HDR;
	hdr = kmalloc(sizeof(*hdr), GFP_KERNEL);
	if (!hdr)
		return -ENOMEM;
	if (copy_from_user(hdr, uarg, sizeof(*hdr))) {
		kfree(hdr);
		return -EFAULT;
	}
	total = hdr->total_size;
	if (hdr->magic != SPICE_REQ_MAGIC || hdr->hdr_size != sizeof(*hdr)) {
		kfree(hdr);
		return -EINVAL;
	}
	if (hdr->version != SPICE_ABI_VERSION) {
		kfree(hdr);
		return -EPROTO;
	}
	kfree(hdr);
	if (total < sizeof(*hdr) || total % 8)
		return -EINVAL;
	if (total > SPICE_MAX_TOTAL_SIZE)
		return -E2BIG;

	c->req = kvmalloc(total, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!c->req)
		return -ENOMEM;
	c->total = total;
	if (copy_from_user(c->req, uarg, total))
		return -EFAULT;
	hdr = c->req;
	/* the header may have changed under us: check it again on our copy */
	if (hdr->magic != SPICE_REQ_MAGIC || hdr->hdr_size != sizeof(*hdr) ||
	    hdr->version != SPICE_ABI_VERSION || hdr->total_size != total)
		return -EINVAL;

	ret = load_table(c, &hdr->files, sizeof(struct spice_file),
			 SPICE_MAX_FILES, (const void **)&c->ufiles, &c->nfiles);
	if (!ret)
		ret = load_table(c, &hdr->vmas, sizeof(struct spice_vma),
				 SPICE_MAX_VMAS, (const void **)&c->vmas,
				 &c->nvmas);
	if (!ret)
		ret = load_table(c, &hdr->sources, sizeof(struct spice_source),
				 SPICE_MAX_SOURCES, (const void **)&c->srcs,
				 &c->nsrcs);
	if (!ret)
		ret = load_table(c, &hdr->ws, sizeof(struct spice_ws),
				 SPICE_MAX_WS, (const void **)&c->ws, &c->nws);
	if (!ret)
		ret = load_table(c, &hdr->keep, sizeof(struct spice_range),
				 SPICE_MAX_KEEP, (const void **)&c->keep,
				 &c->nkeep);
	if (!ret)
		ret = load_table(c, &hdr->xsave, 1, SPICE_MAX_XSAVE, &xs, &xlen);
	if (ret)
		return ret;

	c->err_table = SPICE_ERR_XSAVE;
	if (hdr->flags & SPICE_RF_FPU) {
		u32 size = max(xlen, spice_xsave_size());

		if (xlen < 576)	/* legacy area + xsave header */
			return -EINVAL;
		size = ALIGN(max_t(u32, size, 4096), 64);
		c->xbuf = kvzalloc(size, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
		if (!c->xbuf)
			return -ENOMEM;
		c->xbuf_size = size;
		memcpy(c->xbuf, xs, xlen);
	} else if (xlen) {
		return -EINVAL;
	}
	return 0;
}

void spice_req_free(struct spice_ctx *c)
{
	u32 i;

	if (c->files) {
		for (i = 0; i < c->nfiles; i++) {
			if (!c->files[i])
				continue;
			fput(c->files[i]);
			atomic64_dec(&spice_files_held);
		}
		kvfree(c->files);
	}
	kvfree(c->src_vma);
	kvfree(c->ws_vma);
	kvfree(c->vma_copy);
	kvfree(c->xbuf);
	kvfree(c->bounce);
	kvfree(c->req);
}

static int check_file(struct spice_ctx *c, u32 i)
{
	const struct spice_file *uf = &c->ufiles[i];
	struct file *f;
	struct inode *inode;

	c->err_index = i;
	if (uf->reserved || uf->flags & ~SPICE_FILEF_CLOSE)
		return -EINVAL;
	if (uf->role < SPICE_FILE_PAGES || uf->role > SPICE_FILE_EXE)
		return -EINVAL;
	if (uf->fd < 0)
		return -EBADF;
	f = fget(uf->fd);
	if (!f)
		return -EBADF;
	c->files[i] = f;
	atomic64_inc(&spice_files_held);
	inode = file_inode(f);
	if (!S_ISREG(inode->i_mode) || (f->f_mode & FMODE_PATH))
		return -EBADFD;
	if (!(f->f_mode & FMODE_READ))
		return -EACCES;
	if (inode->i_sb->s_magic == HUGETLBFS_MAGIC)
		return -EOPNOTSUPP;
	switch (uf->role) {
	case SPICE_FILE_PAGES:
		if (!f->f_op->mmap || !f->f_op->read_iter)
			return -EBADFD;
		break;
	case SPICE_FILE_MAP:
		if (!f->f_op->mmap)
			return -EBADFD;
		break;
	case SPICE_FILE_MEMFD:
		if (!f->f_op->mmap || inode->i_sb->s_magic != TMPFS_MAGIC)
			return -EBADFD;
		break;
	case SPICE_FILE_EXE:
		if (spice_noexec(f))
			return -EACCES;
		return inode_permission(file_mnt_user_ns(f), inode, MAY_EXEC);
	}
	return 0;
}

static int check_files(struct spice_ctx *c)
{
	u32 i;
	int ret;

	c->err_table = SPICE_ERR_FILES;
	if (!c->nfiles)
		return 0;
	c->files = kvcalloc(c->nfiles, sizeof(*c->files),
			    GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!c->files)
		return -ENOMEM;
	for (i = 0; i < c->nfiles; i++) {
		ret = check_file(c, i);
		if (ret)
			return ret;
	}
	return 0;
}

static struct file *file_of(const struct spice_ctx *c, s32 idx, u32 role)
{
	if (idx < 0 || (u32)idx >= c->nfiles || c->ufiles[idx].role != role)
		return NULL;
	return c->files[idx];
}

static int check_keep(struct spice_ctx *c)
{
	u64 prev = 0;
	u32 i;

	c->err_table = SPICE_ERR_KEEP;
	for (i = 0; i < c->nkeep; i++) {
		const struct spice_range *k = &c->keep[i];

		c->err_index = i;
		if (!PAGE_ALIGNED(k->start) || !PAGE_ALIGNED(k->end) ||
		    k->start >= k->end || k->end > TASK_SIZE || k->start < prev)
			return -EINVAL;
		prev = k->end;
	}
	return 0;
}

static bool overlaps_keep(const struct spice_ctx *c, u64 start, u64 end)
{
	u32 i;

	for (i = 0; i < c->nkeep; i++)
		if (start < c->keep[i].end && c->keep[i].start < end)
			return true;
	return false;
}

static int check_vma(struct spice_ctx *c, const struct spice_vma *v)
{
	u64 npages = (v->end - v->start) >> PAGE_SHIFT;
	u32 type = v->flags & SPICE_MAP_TYPES;
	bool anon = v->flags & MAP_ANONYMOUS;
	struct file *f = NULL;
	u64 fend;

	if (v->reserved || v->vflags & ~SPICE_VMAF_COPY)
		return -EINVAL;
	if (v->prot & ~SPICE_PROT_ALLOWED || v->flags & ~SPICE_MAP_ALLOWED)
		return -EINVAL;
	if (v->flags & MAP_LOCKED && !capable(CAP_IPC_LOCK) &&
	    !rlimit(RLIMIT_MEMLOCK))
		return -EPERM;
	switch (v->kind) {
	case SPICE_VMA_ANON_PRIVATE:
		if (type != MAP_PRIVATE || !anon || v->file != -1 || v->pgoff)
			return -EINVAL;
		return 0;
	case SPICE_VMA_ANON_SHARED:
		if (type != MAP_SHARED || !anon)
			return -EINVAL;
		f = file_of(c, v->file, SPICE_FILE_MEMFD);
		break;
	case SPICE_VMA_FILE_PRIVATE:
	case SPICE_VMA_FILE_SHARED:
		if (anon || type != (v->kind == SPICE_VMA_FILE_SHARED ?
				     MAP_SHARED : MAP_PRIVATE))
			return -EINVAL;
		f = file_of(c, v->file, SPICE_FILE_MAP);
		break;
	default:
		return -EINVAL;
	}
	if (!f)
		return -EBADF;
	if (v->flags & MAP_GROWSDOWN)
		return -EINVAL;
	if (v->pgoff > (MAX_LFS_FILESIZE >> PAGE_SHIFT) ||
	    npages > (MAX_LFS_FILESIZE >> PAGE_SHIFT) - v->pgoff)
		return -EOVERFLOW;
	fend = (v->pgoff + npages) << PAGE_SHIFT;
	if (type == MAP_SHARED && v->prot & PROT_WRITE &&
	    (!(f->f_mode & FMODE_WRITE) || IS_APPEND(file_inode(f))))
		return -EACCES;
	if (v->prot & PROT_EXEC && spice_noexec(f))
		return -EPERM;
	/* shared anonymous memory must be fully backed by its memfd */
	if (v->kind == SPICE_VMA_ANON_SHARED && fend > i_size_read(file_inode(f)))
		return -ENXIO;
	/* a file mapping may run past EOF, but must start inside the file */
	if (v->kind != SPICE_VMA_ANON_SHARED &&
	    (v->pgoff << PAGE_SHIFT) > i_size_read(file_inode(f)))
		return -ENXIO;
	return 0;
}

static int check_vmas(struct spice_ctx *c)
{
	u64 prev = 0;
	u32 i;
	int ret;

	c->err_table = SPICE_ERR_VMAS;
	c->vma_copy = kvzalloc(max(c->nvmas, 1U),
			       GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!c->vma_copy)
		return -ENOMEM;
	for (i = 0; i < c->nvmas; i++) {
		const struct spice_vma *v = &c->vmas[i];

		c->err_index = i;
		if (!page_range_ok(v->start, v->end) || v->start < prev)
			return -EINVAL;
		if (overlaps_keep(c, v->start, v->end))
			return -EINVAL;
		prev = v->end;
		ret = check_vma(c, v);
		if (ret)
			return ret;
		c->vma_copy[i] = (v->vflags & SPICE_VMAF_COPY) ||
				 (v->flags & MAP_GROWSDOWN);
	}
	return 0;
}

/* index of the VMA containing [start, end), or -1 */
static s64 find_vma_idx(const struct spice_ctx *c, u64 start, u64 end)
{
	u32 lo = 0, hi = c->nvmas;

	while (lo < hi) {
		u32 mid = lo + (hi - lo) / 2;

		if (c->vmas[mid].end <= start)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < c->nvmas && c->vmas[lo].start <= start &&
	    end <= c->vmas[lo].end)
		return lo;
	return -1;
}

static int check_pages_range(u64 start, u64 nr, u64 *end)
{
	if (!PAGE_ALIGNED(start) || !nr || nr > (TASK_SIZE >> PAGE_SHIFT))
		return -EINVAL;
	*end = start + (nr << PAGE_SHIFT);
	if (*end <= start || *end > TASK_SIZE)
		return -EINVAL;
	return 0;
}

static int check_sources(struct spice_ctx *c)
{
	u64 prev = 0, end;
	u32 i;
	int ret;

	c->err_table = SPICE_ERR_SOURCES;
	if (!c->nsrcs)
		return 0;
	c->src_vma = kvmalloc_array(c->nsrcs, sizeof(u32),
				    GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!c->src_vma)
		return -ENOMEM;
	for (i = 0; i < c->nsrcs; i++) {
		const struct spice_source *s = &c->srcs[i];
		struct file *f;
		s64 vi;
		u64 len;

		c->err_index = i;
		if (s->reserved)
			return -EINVAL;
		ret = check_pages_range(s->start, s->nr_pages, &end);
		if (ret)
			return ret;
		if (s->start < prev)
			return -EINVAL;
		prev = end;
		vi = find_vma_idx(c, s->start, end);
		if (vi < 0)
			return -EINVAL;
		if (c->vmas[vi].kind != SPICE_VMA_ANON_PRIVATE &&
		    c->vmas[vi].kind != SPICE_VMA_FILE_PRIVATE)
			return -EINVAL;
		if (s->file > INT_MAX)
			return -EBADF;
		f = file_of(c, s->file, SPICE_FILE_PAGES);
		if (!f)
			return -EBADF;
		len = s->nr_pages << PAGE_SHIFT;
		if (!PAGE_ALIGNED(s->offset) || s->offset > MAX_LFS_FILESIZE ||
		    len > MAX_LFS_FILESIZE - s->offset)
			return -EINVAL;
		if (s->offset + len > i_size_read(file_inode(f)))
			return -ENXIO;
		c->src_vma[i] = vi;
		/* a noexec pages file cannot back PROT_EXEC: copy instead */
		if (c->vmas[vi].prot & PROT_EXEC && spice_noexec(f))
			c->vma_copy[vi] = 1;
	}
	return 0;
}

static int check_ws(struct spice_ctx *c, u32 policy)
{
	u64 prev = 0, end;
	u32 i;
	int ret;

	c->err_table = SPICE_ERR_HDR;
	c->err_index = U32_MAX;
	if (policy > SPICE_PREFAULT_ALL)
		return -EINVAL;
	c->err_table = SPICE_ERR_WS;
	if (!c->nws)
		return 0;
	if (policy == SPICE_PREFAULT_NONE)
		return -EINVAL;
	c->ws_vma = kvmalloc_array(c->nws, sizeof(u32),
				   GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!c->ws_vma)
		return -ENOMEM;
	for (i = 0; i < c->nws; i++) {
		const struct spice_ws *w = &c->ws[i];
		s64 vi;

		c->err_index = i;
		if (w->reserved || w->flags & ~SPICE_WS_WRITE)
			return -EINVAL;
		ret = check_pages_range(w->start, w->nr_pages, &end);
		if (ret)
			return ret;
		if (w->start < prev)
			return -EINVAL;
		prev = end;
		vi = find_vma_idx(c, w->start, end);
		if (vi < 0)
			return -EINVAL;
		c->ws_vma[i] = vi;
	}
	return 0;
}

static bool user_addr_ok(u64 a)
{
	return a < TASK_SIZE;
}

static int check_mm(struct spice_ctx *c)
{
	const struct spice_mm *m = &c->req->mm;
	const u64 vals[] = {
		m->start_code, m->end_code, m->start_data, m->end_data,
		m->start_brk, m->brk, m->start_stack, m->arg_start,
		m->arg_end, m->env_start, m->env_end,
	};
	u32 i;

	c->err_table = SPICE_ERR_MM;
	c->err_index = U32_MAX;
	if (!(c->req->flags & SPICE_RF_MM))
		return 0;
	for (i = 0; i < ARRAY_SIZE(vals); i++)
		if (vals[i] >= TASK_SIZE || vals[i] < SPICE_MIN_ADDR)
			return -EINVAL;
	if (m->start_code >= m->end_code || m->start_data > m->end_data ||
	    m->start_brk > m->brk || m->arg_start > m->arg_end ||
	    m->env_start > m->env_end)
		return -EINVAL;
	if (m->auxv_words % 2 ||
	    m->auxv_words > min_t(u32, SPICE_AUXV_WORDS, AT_VECTOR_SIZE))
		return -EINVAL;
	for (i = m->auxv_words; i < SPICE_AUXV_WORDS; i++)
		if (m->auxv[i])
			return -EINVAL;
	/*
	 * /proc/PID/cmdline and environ read anonymous memory only
	 * (FOLL_ANON): keep the VMAs holding them anonymous.
	 */
	for (i = 0; i < c->nvmas; i++) {
		const struct spice_vma *v = &c->vmas[i];

		if ((v->start < m->arg_end && m->arg_start < v->end) ||
		    (v->start < m->env_end && m->env_start < v->end))
			c->vma_copy[i] = 1;
	}
	if (m->exe_file != -1) {
		c->exe = file_of(c, m->exe_file, SPICE_FILE_EXE);
		if (!c->exe)
			return -EBADF;
	}
	return 0;
}

static int check_task(struct spice_ctx *c)
{
	const struct spice_task *t = &c->req->task;
	u32 i;

	c->err_table = SPICE_ERR_TASK;
	c->err_index = U32_MAX;	/* set per entry for the sigactions only */
	if (t->reserved0)
		return -EINVAL;
	/* sigaltstack: SS_DISABLE, or a stack (optionally SS_AUTODISARM) */
	if (t->ss_flags == SS_DISABLE) {
		if (t->ss_sp || t->ss_size)
			return -EINVAL;
	} else {
		if (t->ss_flags & ~SS_AUTODISARM)
			return -EINVAL;
		if (t->ss_size < MINSIGSTKSZ)
			return -ENOMEM;
		if (t->ss_size > TASK_SIZE || t->ss_sp > TASK_SIZE - t->ss_size)
			return -EINVAL;
	}
	if (!user_addr_ok(t->clear_tid_addr))
		return -EINVAL;
	if (t->robust_list ? (!user_addr_ok(t->robust_list) ||
			      t->robust_list_len != sizeof(struct robust_list_head))
			   : t->robust_list_len)
		return -EINVAL;
	if (t->rseq) {
		if (!IS_ALIGNED(t->rseq, __alignof__(struct rseq)) ||
		    t->rseq_len != sizeof(struct rseq) ||
		    t->rseq > TASK_SIZE - sizeof(struct rseq))
			return -EINVAL;
	} else if (t->rseq_len || t->rseq_sig) {
		return -EINVAL;
	}
	for (i = 0; i < SPICE_NSIG; i++) {
		const struct spice_sigaction *a = &t->act[i];
		int sig = i + 1;

		c->err_index = i;
		if (!(t->sigaction_mask & BIT_ULL(i)))
			continue;
		if (sig == SIGKILL || sig == SIGSTOP) {
			if (a->handler || a->flags || a->restorer || a->mask)
				return -EINVAL;
			continue;
		}
		if (a->flags & ~(u64)UAPI_SA_FLAGS)
			return -EINVAL;
		if (a->handler > 1 && !user_addr_ok(a->handler))
			return -EINVAL;
		if (!user_addr_ok(a->restorer))
			return -EINVAL;
	}
	return 0;
}

static bool ip_in_keep(const struct spice_ctx *c, u64 ip)
{
	u32 i;

	for (i = 0; i < c->nkeep; i++)
		if (ip >= c->keep[i].start && ip < c->keep[i].end)
			return true;
	return false;
}

static int check_regs(struct spice_ctx *c)
{
	const struct spice_regs *r = &c->req->regs;

	c->err_table = SPICE_ERR_REGS;
	c->err_index = U32_MAX;
	if (!(c->req->flags & SPICE_RF_REGS)) {
		/* the caller returns where it was: that code must survive */
		if (!ip_in_keep(c, current_pt_regs()->ip))
			return -EINVAL;
		return 0;
	}
	if (r->cs != __USER_CS || r->ss != __USER_DS)
		return -EINVAL;
	if (r->ip >= TASK_SIZE_MAX || r->sp >= TASK_SIZE_MAX ||
	    r->fs_base >= TASK_SIZE_MAX || r->gs_base >= TASK_SIZE_MAX)
		return -EINVAL;
	if ((r->ds && r->ds != __USER_DS) || (r->es && r->es != __USER_DS) ||
	    r->fs || r->gs)
		return -EINVAL;
	return 0;
}

int spice_req_validate(struct spice_ctx *c)
{
	const struct spice_restore *h = c->req;
	u32 i;
	int ret;

	c->err_table = SPICE_ERR_HDR;
	c->err_index = U32_MAX;
	if (h->flags & ~SPICE_RF_KNOWN || h->reserved0)
		return -EINVAL;
	for (i = 0; i < ARRAY_SIZE(h->reserved); i++)
		if (h->reserved[i])
			return -EINVAL;
	ret = check_files(c);
	if (!ret)
		ret = check_keep(c);
	if (!ret)
		ret = check_vmas(c);
	if (!ret)
		ret = check_sources(c);
	if (!ret)
		ret = check_ws(c, h->prefault);
	if (!ret)
		ret = check_mm(c);
	if (!ret)
		ret = check_task(c);
	if (!ret)
		ret = check_regs(c);
	return ret;
}
