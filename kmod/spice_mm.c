// SPDX-License-Identifier: GPL-2.0
/*
 * spice: tear down the caller's address space and build the restored one.
 *
 * Memory model (the Spice design): the present pages of a private VMA are a
 * MAP_PRIVATE mapping of the pages image at their offset, served from the
 * page cache and shared by every instance restored from the same image;
 * writes COW into anonymous pages.  The holes between present ranges stay
 * anonymous (zero pages).  Copy-mode VMAs get their pages copied into
 * anonymous memory instead.  Only exported symbols are used: vm_munmap(),
 * vm_mmap(), kernel_read(), access_process_vm(), get_user_pages_remote().
 */
#include <linux/fs.h>
#include <linux/fadvise.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/ktime.h>
#include "spice_internal.h"

#define SPICE_MAP_INHERIT	(MAP_NORESERVE | MAP_LOCKED)
#define SPICE_GUP_BATCH		4096UL

int spice_teardown(struct spice_ctx *c)
{
	u64 t0 = ktime_get_ns();
	unsigned long pos = 0, stop;
	u32 i;
	int ret;

	for (i = 0; i <= c->nkeep; i++) {
		stop = i < c->nkeep ? c->keep[i].start : TASK_SIZE;
		if (stop > pos) {
			ret = vm_munmap(pos, stop - pos);
			if (ret)
				return ret;
		}
		if (i < c->nkeep)
			pos = c->keep[i].end;
	}
	c->ns_teardown = ktime_get_ns() - t0;
	return 0;
}

static int map_fixed(struct file *f, u64 start, u64 len, u32 prot,
		     unsigned long flags, u64 off)
{
	unsigned long addr = vm_mmap(f, start, len, prot, flags, off);

	if (IS_ERR_VALUE(addr))
		return (int)addr;
	return addr == start ? 0 : -EEXIST;
}

static int map_vma(struct spice_ctx *c, const struct spice_vma *v)
{
	unsigned long flags = MAP_FIXED_NOREPLACE |
			      (v->flags & (SPICE_MAP_INHERIT | MAP_GROWSDOWN));
	struct file *f = NULL;

	switch (v->kind) {
	case SPICE_VMA_ANON_PRIVATE:
		flags |= MAP_PRIVATE | MAP_ANONYMOUS;
		break;
	case SPICE_VMA_FILE_PRIVATE:
		flags |= MAP_PRIVATE;
		f = c->files[v->file];
		break;
	default:	/* ANON_SHARED (memfd), FILE_SHARED */
		flags |= MAP_SHARED;
		f = c->files[v->file];
		break;
	}
	return map_fixed(f, v->start, v->end - v->start, v->prot, flags,
			 f ? v->pgoff << PAGE_SHIFT : 0);
}

/* Copy one source into the (already mapped) VMA through a bounce buffer. */
static int copy_source(struct spice_ctx *c, const struct spice_source *s)
{
	struct file *f = c->files[s->file];
	u64 left = s->nr_pages << PAGE_SHIFT;
	unsigned long addr = s->start;
	loff_t pos = s->offset;

	if (!c->bounce) {
		c->bounce = kvmalloc(SPICE_BOUNCE_SIZE, GFP_KERNEL);
		if (!c->bounce)
			return -ENOMEM;
	}
	while (left) {
		size_t n = min_t(u64, left, SPICE_BOUNCE_SIZE);
		ssize_t r = kernel_read(f, c->bounce, n, &pos);

		if (r != n)
			return r < 0 ? r : -EIO;
		r = access_process_vm(current, addr, c->bounce, n,
				      FOLL_FORCE | FOLL_WRITE);
		if (r != n)
			return -EFAULT;
		addr += n;
		left -= n;
		c->pages_copied += n >> PAGE_SHIFT;
		if (fatal_signal_pending(current))
			return -EINTR;
	}
	return 0;
}

static int install_source(struct spice_ctx *c, u32 si)
{
	const struct spice_source *s = &c->srcs[si];
	const struct spice_vma *v = &c->vmas[c->src_vma[si]];
	int ret;

	if (c->vma_copy[c->src_vma[si]])
		return copy_source(c, s);
	ret = map_fixed(c->files[s->file], s->start, s->nr_pages << PAGE_SHIFT,
			v->prot, MAP_PRIVATE | MAP_FIXED |
			(v->flags & SPICE_MAP_INHERIT), s->offset);
	if (!ret)
		c->pages_mapped += s->nr_pages;
	return ret;
}

int spice_build(struct spice_ctx *c)
{
	u64 t0 = ktime_get_ns();
	u32 vi, si = 0;
	int ret;

	for (vi = 0; vi < c->nvmas; vi++) {
		ret = map_vma(c, &c->vmas[vi]);
		if (ret)
			return ret;
		/* sources are sorted like the VMAs: install this VMA's ones */
		for (; si < c->nsrcs && c->src_vma[si] == vi; si++) {
			ret = install_source(c, si);
			if (ret)
				return ret;
		}
	}
	c->ns_build = ktime_get_ns() - t0;
	return 0;
}

/* Populate page tables for [start, start + nr pages); never fatal. */
static void prefault_range(struct spice_ctx *c, u64 start, u64 nr, bool write)
{
	struct mm_struct *mm = current->mm;
	int locked = 1;

	mmap_read_lock(mm);
	while (nr) {
		long got = get_user_pages_remote(mm, start,
						 min(nr, (u64)SPICE_GUP_BATCH),
						 write ? FOLL_WRITE : 0,
						 NULL, NULL, &locked);
		if (!locked) {
			mmap_read_lock(mm);
			locked = 1;
		}
		if (got <= 0) {
			c->prefault_errors++;
			break;
		}
		if (write)
			c->pages_precow += got;
		else
			c->pages_prefaulted += got;
		start += (u64)got << PAGE_SHIFT;
		nr -= got;
	}
	mmap_read_unlock(mm);
}

/*
 * Readahead ahead of the prefault (the Spice design's prefetch): every file
 * range the prefault is going to fault in is handed to POSIX_FADV_WILLNEED
 * first, merged where the file offsets continue, so that the faults wait for
 * reads already in flight instead of issuing them one window at a time when
 * the page cache is cold.  Best effort, like the prefault.
 */
struct spice_ra {
	struct file *f;
	loff_t off;
	loff_t len;
};

static void ra_flush(struct spice_ra *ra)
{
	if (ra->f && ra->len)
		vfs_fadvise(ra->f, ra->off, ra->len, POSIX_FADV_WILLNEED);
	ra->f = NULL;
	ra->len = 0;
}

static void ra_add(struct spice_ra *ra, struct file *f, loff_t off, loff_t len)
{
	if (ra->f == f && ra->off + ra->len == off) {
		ra->len += len;
		return;
	}
	ra_flush(ra);
	ra->f = f;
	ra->off = off;
	ra->len = len;
}

static u64 src_end(const struct spice_source *s)
{
	return s->start + (s->nr_pages << PAGE_SHIFT);
}

/* [start, end) of VMA vi: its pages-image pieces, or else its file */
static void ra_range(struct spice_ctx *c, struct spice_ra *ra, u32 vi,
		     u64 start, u64 end, u32 *si)
{
	const struct spice_vma *v = &c->vmas[vi];
	u32 j;

	if (!(v->prot & PROT_READ))
		return;
	if (v->kind != SPICE_VMA_ANON_PRIVATE)
		ra_add(ra, c->files[v->file],
		       (v->pgoff << PAGE_SHIFT) + (start - v->start), end - start);
	if (c->vma_copy[vi])
		return;	/* its sources were copied in: present */
	while (*si < c->nsrcs && src_end(&c->srcs[*si]) <= start)
		(*si)++;
	for (j = *si; j < c->nsrcs && c->srcs[j].start < end; j++) {
		const struct spice_source *s = &c->srcs[j];
		u64 a = max(start, s->start), b = min(end, src_end(s));

		ra_add(ra, c->files[s->file], s->offset + (a - s->start), b - a);
	}
}

static void spice_readahead(struct spice_ctx *c)
{
	struct spice_ra ra = {};
	u32 i, si = 0;

	for (i = 0; i < c->nws; i++) {
		const struct spice_ws *w = &c->ws[i];

		ra_range(c, &ra, c->ws_vma[i], w->start,
			 w->start + (w->nr_pages << PAGE_SHIFT), &si);
	}
	if (c->req->prefault == SPICE_PREFAULT_ALL) {
		ra_flush(&ra);
		for (i = 0; i < c->nsrcs; i++) {
			const struct spice_source *s = &c->srcs[i];
			u32 vi = c->src_vma[i];

			if (c->vma_copy[vi] || !(c->vmas[vi].prot & PROT_READ))
				continue;
			ra_add(&ra, c->files[s->file], s->offset,
			       s->nr_pages << PAGE_SHIFT);
		}
	}
	ra_flush(&ra);
}

void spice_prefault(struct spice_ctx *c)
{
	u32 policy = c->req->prefault;
	u64 t0 = ktime_get_ns();
	u32 i;

	if (policy == SPICE_PREFAULT_NONE)
		return;
	spice_readahead(c);
	for (i = 0; i < c->nws; i++) {
		const struct spice_ws *w = &c->ws[i];
		const struct spice_vma *v = &c->vmas[c->ws_vma[i]];
		/* pre-COW is for private memory: never dirty shared pages */
		bool cow = (w->flags & SPICE_WS_WRITE) && (v->prot & PROT_WRITE) &&
			   (v->flags & MAP_TYPE) == MAP_PRIVATE;

		if (!(v->prot & PROT_READ))
			continue;	/* nothing to prefault in PROT_NONE */
		prefault_range(c, w->start, w->nr_pages, cow);
	}
	if (policy == SPICE_PREFAULT_ALL) {
		for (i = 0; i < c->nsrcs; i++) {
			u32 vi = c->src_vma[i];

			if (c->vma_copy[vi] || !(c->vmas[vi].prot & PROT_READ))
				continue;	/* copied pages are present */
			prefault_range(c, c->srcs[i].start,
				       c->srcs[i].nr_pages, false);
		}
	}
	c->ns_prefault = ktime_get_ns() - t0;
}
