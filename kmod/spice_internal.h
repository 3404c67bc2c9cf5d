/* SPDX-License-Identifier: GPL-2.0 */
/* Internal interfaces shared by the files of spice.ko. */
#ifndef SPICE_INTERNAL_H
#define SPICE_INTERNAL_H

#include <linux/types.h>
#include <linux/atomic.h>
#include "include/uapi/spice.h"

struct file;

/* One SPICE_IOC_RESTORE call: the kernel copy of the request and its state. */
struct spice_ctx {
	struct spice_restore *req;	/* whole request, kvmalloc'ed */
	u32 total;

	const struct spice_file *ufiles;
	struct file **files;		/* fget() of each files[] entry */
	u32 nfiles;
	const struct spice_vma *vmas;
	u32 nvmas;
	const struct spice_source *srcs;
	u32 nsrcs;
	const struct spice_ws *ws;
	u32 nws;
	const struct spice_range *keep;
	u32 nkeep;

	u32 *src_vma;			/* VMA index of each source */
	u32 *ws_vma;			/* VMA index of each ws entry */
	u8 *vma_copy;			/* effective SPICE_VMAF_COPY per VMA */

	void *xbuf;			/* xsave image padded to the uabi size */
	u32 xbuf_size;

	struct file *exe;		/* new exe file (ref held in files[]) */
	bool exe_denied;		/* exe_file_deny_write_access() done */

	void *bounce;			/* copy-mode buffer */

	u32 err_table;			/* SPICE_ERR_* of a rejection */
	u32 err_index;

	/* per-call statistics, folded into the global counters at the end */
	u64 pages_mapped;
	u64 pages_copied;
	u64 pages_prefaulted;
	u64 pages_precow;
	u64 prefault_errors;
	u64 ns_teardown;
	u64 ns_build;
	u64 ns_prefault;
};

/* live file references and requests held by the module (leak gauges) */
extern atomic64_t spice_files_held;
extern atomic64_t spice_reqs_live;

/* spice_validate.c */
int spice_req_load(struct spice_ctx *c, const void __user *uarg);
int spice_req_validate(struct spice_ctx *c);
void spice_req_free(struct spice_ctx *c);

/* spice_mm.c */
int spice_teardown(struct spice_ctx *c);
int spice_build(struct spice_ctx *c);
void spice_prefault(struct spice_ctx *c);

/* spice_task.c */
int spice_check_caller(struct spice_ctx *c);
int spice_fpu_check(struct spice_ctx *c);
int spice_prepare(struct spice_ctx *c);
void spice_unprepare(struct spice_ctx *c);
void spice_forget_user_pointers(void);
int spice_install_task(struct spice_ctx *c);
long spice_install_regs(struct spice_ctx *c);
void spice_close_fds(struct spice_ctx *c);
u32 spice_xsave_size(void);
u64 spice_xfeatures(void);

#define SPICE_BOUNCE_SIZE	(64U << 10)

#endif /* SPICE_INTERNAL_H */
