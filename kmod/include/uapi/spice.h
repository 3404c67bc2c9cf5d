/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * spice.h - user ABI of the spice restore module (/dev/spice).
 *
 * A task being restored calls, on itself,
 *	ioctl(fd_of_dev_spice, SPICE_IOC_RESTORE, request)
 * where request points to one contiguous buffer: a struct spice_restore
 * header followed by tables placed at the offsets the header gives.  All
 * integers are little-endian (x86-64 only), all structs have explicit
 * padding, no field is a kernel pointer; user addresses are __u64.
 * Reserved fields must be zero.  See kmod/README.md for the semantics.
 */
#ifndef _UAPI_LINUX_SPICE_H
#define _UAPI_LINUX_SPICE_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define SPICE_ABI_VERSION	1
#define SPICE_REQ_MAGIC		0x51455253	/* "SREQ" */
#define SPICE_DEVICE		"/dev/spice"

/* Limits (the module rejects larger requests with E2BIG). */
#define SPICE_MAX_TOTAL_SIZE	(64U << 20)
#define SPICE_MAX_FILES		1024
#define SPICE_MAX_VMAS		65536
#define SPICE_MAX_SOURCES	(1U << 20)
#define SPICE_MAX_WS		(1U << 20)
#define SPICE_MAX_KEEP		16
#define SPICE_MAX_XSAVE		(64U << 10)
#define SPICE_AUXV_WORDS	64
#define SPICE_NSIG		64
/* Lowest address a VMA may start at (Debian's default vm.mmap_min_addr). */
#define SPICE_MIN_ADDR		0x10000ULL

/* SPICE_IOC_VERSION reply. */
struct spice_version {
	__u32 abi_version;	/* SPICE_ABI_VERSION */
	__u32 size;		/* sizeof(struct spice_version) */
	__u32 req_hdr_size;	/* sizeof(struct spice_restore) */
	__u32 xsave_size;	/* caller's NT_X86_XSTATE (uabi) xsave size */
	__u64 xfeatures;	/* xfeatures the caller may restore */
	__u64 features;		/* SPICE_FEAT_* */
	__u32 max_files;
	__u32 max_vmas;
	__u32 max_sources;
	__u32 max_ws;
	__u32 max_keep;
	__u32 max_total_size;
	__u64 reserved[4];
};

#define SPICE_FEAT_PAGECACHE	(1ULL << 0)	/* private pages mapped from the pages image */
#define SPICE_FEAT_COPY		(1ULL << 1)	/* SPICE_VMAF_COPY */
#define SPICE_FEAT_PREFAULT	(1ULL << 2)	/* SPICE_PREFAULT_WS/ALL + SPICE_WS_WRITE */
#define SPICE_FEAT_REGS		(1ULL << 3)
#define SPICE_FEAT_FPU		(1ULL << 4)
#define SPICE_FEAT_EXE		(1ULL << 5)

/* A table inside the request buffer; an empty table is all zero. */
struct spice_table {
	__u32 offset;		/* bytes from the start of the request, 8-aligned */
	__u32 count;		/* number of entries */
	__u32 entry_size;	/* sizeof(entry); 1 for the xsave byte table */
	__u32 reserved;
};

/* files[]: every fd the request uses, referenced by index. */
struct spice_file {
	__s32 fd;		/* fd in the calling task */
	__u32 role;		/* SPICE_FILE_* */
	__u32 flags;		/* SPICE_FILEF_* */
	__u32 reserved;
};

#define SPICE_FILE_PAGES	1	/* regular file: pages image (pages-N.img) */
#define SPICE_FILE_MAP		2	/* regular file mapped by FILE_* VMAs */
#define SPICE_FILE_MEMFD	3	/* tmpfs/memfd backing an ANON_SHARED VMA */
#define SPICE_FILE_EXE		4	/* new /proc/PID/exe */

#define SPICE_FILEF_CLOSE	(1U << 0)	/* close(fd) after a successful restore */

/* vmas[]: the new address space, sorted by start, non-overlapping. */
struct spice_vma {
	__u64 start;		/* page aligned */
	__u64 end;		/* page aligned, exclusive */
	__u64 pgoff;		/* file offset in pages (0 for ANON_PRIVATE) */
	__u32 prot;		/* PROT_READ | PROT_WRITE | PROT_EXEC */
	__u32 flags;		/* MAP_* as in CRIU's vma_entry.flags */
	__u32 kind;		/* SPICE_VMA_* */
	__s32 file;		/* index in files[], -1 for ANON_PRIVATE */
	__u32 vflags;		/* SPICE_VMAF_* */
	__u32 reserved;
};

#define SPICE_VMA_ANON_PRIVATE	1
#define SPICE_VMA_ANON_SHARED	2	/* MAP_SHARED of a SPICE_FILE_MEMFD */
#define SPICE_VMA_FILE_PRIVATE	3
#define SPICE_VMA_FILE_SHARED	4

/*
 * Copy the VMA's sources into anonymous memory now instead of mapping the
 * pages image (forced for MAP_GROWSDOWN, and for PROT_EXEC when the pages
 * image lives on a noexec mount).
 */
#define SPICE_VMAF_COPY		(1U << 0)

/*
 * sources[]: present pages of private VMAs (CRIU pagemap entries with
 * PE_PRESENT), sorted by start, each inside one private VMA.
 */
struct spice_source {
	__u64 start;		/* page aligned user address */
	__u64 nr_pages;
	__u64 offset;		/* byte offset in the pages file, page aligned */
	__u32 file;		/* index in files[] (role SPICE_FILE_PAGES) */
	__u32 reserved;
};

/* ws[]: working set to prefault, sorted by start, each inside one VMA. */
struct spice_ws {
	__u64 start;
	__u64 nr_pages;
	__u32 flags;		/* SPICE_WS_* */
	__u32 reserved;
};

#define SPICE_WS_WRITE		(1U << 0)	/* will be written: pre-COW now */

/* keep[]: ranges that survive the teardown (vDSO, vvar, restorer page). */
struct spice_range {
	__u64 start;
	__u64 end;
};

struct spice_mm {
	__u64 start_code;
	__u64 end_code;
	__u64 start_data;
	__u64 end_data;
	__u64 start_brk;
	__u64 brk;
	__u64 start_stack;
	__u64 arg_start;
	__u64 arg_end;
	__u64 env_start;
	__u64 env_end;
	__u32 auxv_words;	/* used words of auxv[], even */
	__s32 exe_file;		/* index in files[] (SPICE_FILE_EXE) or -1 */
	__u64 auxv[SPICE_AUXV_WORDS];
};

/* The kernel's struct sigaction (x86-64 k_sigaction layout). */
struct spice_sigaction {
	__u64 handler;		/* SIG_DFL (0), SIG_IGN (1) or address */
	__u64 flags;		/* SA_* */
	__u64 restorer;
	__u64 mask;		/* bit (sig - 1) */
};

struct spice_task {
	__u64 blocked;		/* with SPICE_RF_SIGMASK: bit (sig - 1) */
	__u64 sigaction_mask;	/* bit (sig - 1): install act[sig - 1] */
	__u64 ss_sp;		/* sigaltstack; ss_flags SS_DISABLE = none */
	__u64 ss_size;
	__u32 ss_flags;
	__u32 reserved0;
	__u64 clear_tid_addr;	/* set_tid_address(), 0 = none */
	__u64 robust_list;	/* set_robust_list(), 0 = none */
	__u64 robust_list_len;
	__u64 rseq;		/* rseq() registration, 0 = none */
	__u32 rseq_len;
	__u32 rseq_sig;
	struct spice_sigaction act[SPICE_NSIG];
};

/* struct user_regs_struct order (CRIU user_x86_regs_entry). */
struct spice_regs {
	__u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	__u64 ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
	__u64 fs_base, gs_base, ds, es, fs, gs;
};

struct spice_restore {
	__u32 magic;		/* SPICE_REQ_MAGIC */
	__u32 version;		/* SPICE_ABI_VERSION */
	__u32 hdr_size;		/* sizeof(struct spice_restore) */
	__u32 total_size;	/* header + tables, bytes */
	__u64 flags;		/* SPICE_RF_* */
	__u32 prefault;		/* SPICE_PREFAULT_* */
	__u32 reserved0;
	struct spice_table files;	/* struct spice_file */
	struct spice_table vmas;	/* struct spice_vma */
	struct spice_table sources;	/* struct spice_source */
	struct spice_table ws;		/* struct spice_ws */
	struct spice_table keep;	/* struct spice_range */
	struct spice_table xsave;	/* bytes: NT_X86_XSTATE layout */
	struct spice_mm mm;
	struct spice_task task;
	struct spice_regs regs;
	__u64 reserved[7];
	/* out: where validation failed (SPICE_ERR_*, entry index); not read */
	__u32 err_table;
	__u32 err_index;
};

#define SPICE_ERR_NONE		0
#define SPICE_ERR_HDR		1
#define SPICE_ERR_FILES		2
#define SPICE_ERR_VMAS		3
#define SPICE_ERR_SOURCES	4
#define SPICE_ERR_WS		5
#define SPICE_ERR_KEEP		6
#define SPICE_ERR_XSAVE		7
#define SPICE_ERR_MM		8
#define SPICE_ERR_TASK		9
#define SPICE_ERR_REGS		10
#define SPICE_ERR_CALLER	11

#define SPICE_RF_DRY_RUN	(1ULL << 0)	/* validate only, change nothing */
#define SPICE_RF_REGS		(1ULL << 1)	/* return into regs */
#define SPICE_RF_FPU		(1ULL << 2)	/* install the xsave table */
#define SPICE_RF_SIGMASK	(1ULL << 3)	/* install task.blocked */
#define SPICE_RF_MM		(1ULL << 4)	/* install mm fields, auxv, exe */
#define SPICE_RF_KNOWN		((1ULL << 5) - 1)

#define SPICE_PREFAULT_NONE	0	/* everything faults in lazily */
#define SPICE_PREFAULT_WS	1	/* prefault ws[] only */
#define SPICE_PREFAULT_ALL	2	/* every source page, plus ws[] */

#define SPICE_IOC_MAGIC		0xBD
#define SPICE_IOC_VERSION	_IOR(SPICE_IOC_MAGIC, 0x01, struct spice_version)
#define SPICE_IOC_RESTORE	_IOWR(SPICE_IOC_MAGIC, 0x02, struct spice_restore)

#endif /* _UAPI_LINUX_SPICE_H */
