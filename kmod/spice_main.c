// SPDX-License-Identifier: GPL-2.0
/*
 * spice: direct process-state installation for spice-criu restores.
 *
 * /dev/spice, ioctls:
 *  SPICE_IOC_VERSION  ABI version, limits and the caller's xsave layout.
 *  SPICE_IOC_RESTORE  called by the task being restored, on itself: tears
 *                     down its address space (except the keep ranges),
 *                     builds the restored one from the pages image(s) and
 *                     files, prefaults the working set, installs mm fields,
 *                     exe, signal state, FPU and registers, and returns
 *                     into the restored register state.
 * Statistics: /sys/class/misc/spice/stats/.
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/capability.h>
#include <linux/sched/signal.h>
#include <linux/ktime.h>
#include <linux/device.h>
#include <linux/sysfs.h>
#include <linux/signal.h>
#include <linux/mm_types.h>
#include "spice_internal.h"

enum spice_stat {
	ST_RESTORES_OK,
	ST_RESTORES_REJECTED,
	ST_RESTORES_KILLED,
	ST_DRY_RUNS,
	ST_PAGES_MAPPED,
	ST_PAGES_COPIED,
	ST_PAGES_PREFAULTED,
	ST_PAGES_PRECOW,
	ST_PREFAULT_ERRORS,
	ST_NS_TOTAL,
	ST_NS_LAST,
	ST_NS_LAST_TEARDOWN,
	ST_NS_LAST_BUILD,
	ST_NS_LAST_PREFAULT,
	ST_COUNT
};

static atomic64_t spice_stats[ST_COUNT];
atomic64_t spice_files_held = ATOMIC64_INIT(0);
atomic64_t spice_reqs_live = ATOMIC64_INIT(0);

static void stat_add(enum spice_stat s, u64 v)
{
	atomic64_add(v, &spice_stats[s]);
}

static void stats_fold(const struct spice_ctx *c, u64 ns)
{
	stat_add(ST_PAGES_MAPPED, c->pages_mapped);
	stat_add(ST_PAGES_COPIED, c->pages_copied);
	stat_add(ST_PAGES_PREFAULTED, c->pages_prefaulted);
	stat_add(ST_PAGES_PRECOW, c->pages_precow);
	stat_add(ST_PREFAULT_ERRORS, c->prefault_errors);
	stat_add(ST_NS_TOTAL, ns);
	atomic64_set(&spice_stats[ST_NS_LAST], ns);
	atomic64_set(&spice_stats[ST_NS_LAST_TEARDOWN], c->ns_teardown);
	atomic64_set(&spice_stats[ST_NS_LAST_BUILD], c->ns_build);
	atomic64_set(&spice_stats[ST_NS_LAST_PREFAULT], c->ns_prefault);
}

/* After the teardown there is no way back: finish or kill the caller. */
static long spice_commit(struct spice_ctx *c)
{
	int ret;

	spice_forget_user_pointers();
	ret = spice_teardown(c);
	if (!ret)
		ret = spice_build(c);
	if (ret)
		return ret;
	spice_prefault(c);
	ret = spice_install_task(c);
	if (ret)
		return ret;
	spice_close_fds(c);
	return 0;
}

/* Tell the caller which table entry was rejected (best effort). */
static void report_rejection(struct spice_restore __user *ureq,
			     const struct spice_ctx *c)
{
	if (put_user(c->err_table, &ureq->err_table) ||
	    put_user(c->err_index, &ureq->err_index))
		return;
}

static long spice_ioctl_restore(struct spice_restore __user *uarg)
{
	u64 t0 = ktime_get_ns();
	struct spice_ctx *c;
	long ret;

	if (!capable(CAP_CHECKPOINT_RESTORE) && !capable(CAP_SYS_ADMIN))
		return -EPERM;
	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c)
		return -ENOMEM;
	atomic64_inc(&spice_reqs_live);
	ret = spice_check_caller(c);
	if (!ret)
		ret = spice_req_load(c, uarg);
	if (!ret)
		ret = spice_req_validate(c);
	if (!ret)
		ret = spice_fpu_check(c);
	if (ret || c->req->flags & SPICE_RF_DRY_RUN) {
		stat_add(ret ? ST_RESTORES_REJECTED : ST_DRY_RUNS, 1);
		goto reject;
	}
	c->err_table = SPICE_ERR_NONE;
	ret = spice_prepare(c);
	if (ret) {
		stat_add(ST_RESTORES_REJECTED, 1);
		goto reject;
	}

	ret = spice_commit(c);
	if (ret) {
		spice_unprepare(c);
		pr_info_ratelimited("spice: restore of pid %d failed after teardown (%ld), killing it\n",
				    task_pid_nr(current), ret);
		force_sig(SIGKILL);
		stat_add(ST_RESTORES_KILLED, 1);
		goto out;
	}
	ret = spice_install_regs(c);
	stat_add(ST_RESTORES_OK, 1);
	stats_fold(c, ktime_get_ns() - t0);
	goto out;
reject:
	/* the caller's memory is untouched here: report where it failed */
	if (ret && ret != -EFAULT)
		report_rejection(uarg, c);
out:
	spice_req_free(c);
	kfree(c);
	atomic64_dec(&spice_reqs_live);
	return ret;
}

static long spice_ioctl_version(void __user *uarg)
{
	struct spice_version v = {
		.abi_version = SPICE_ABI_VERSION,
		.size = sizeof(v),
		.req_hdr_size = sizeof(struct spice_restore),
		.xsave_size = spice_xsave_size(),
		.xfeatures = spice_xfeatures(),
		.features = SPICE_FEAT_PAGECACHE | SPICE_FEAT_COPY |
			    SPICE_FEAT_PREFAULT | SPICE_FEAT_REGS |
			    SPICE_FEAT_FPU | SPICE_FEAT_EXE,
		.max_files = SPICE_MAX_FILES,
		.max_vmas = SPICE_MAX_VMAS,
		.max_sources = SPICE_MAX_SOURCES,
		.max_ws = SPICE_MAX_WS,
		.max_keep = SPICE_MAX_KEEP,
		.max_total_size = SPICE_MAX_TOTAL_SIZE,
	};

	return copy_to_user(uarg, &v, sizeof(v)) ? -EFAULT : 0;
}

static long spice_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case SPICE_IOC_VERSION:
		return spice_ioctl_version((void __user *)arg);
	case SPICE_IOC_RESTORE:
		return spice_ioctl_restore((struct spice_restore __user *)arg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations spice_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = spice_ioctl,
	.llseek = noop_llseek,
};

/* /sys/class/misc/spice/stats/<counter>; write to stats/reset to zero them */
struct spice_stat_attr {
	struct device_attribute attr;
	enum spice_stat id;
};

static ssize_t stat_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct spice_stat_attr *sa = container_of(attr, struct spice_stat_attr,
						  attr);

	return sysfs_emit(buf, "%lld\n", atomic64_read(&spice_stats[sa->id]));
}

static ssize_t gauge_show(atomic64_t *g, char *buf)
{
	return sysfs_emit(buf, "%lld\n", atomic64_read(g));
}

static ssize_t files_held_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return gauge_show(&spice_files_held, buf);
}

static ssize_t requests_live_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	return gauge_show(&spice_reqs_live, buf);
}

static ssize_t reset_store(struct device *dev, struct device_attribute *attr,
			   const char *buf, size_t count)
{
	int i;

	for (i = 0; i < ST_COUNT; i++)
		atomic64_set(&spice_stats[i], 0);
	return count;
}

#define SPICE_STAT_ATTR(_name, _id) \
	static struct spice_stat_attr stat_attr_##_name = { \
		.attr = __ATTR(_name, 0444, stat_show, NULL), .id = _id }

SPICE_STAT_ATTR(restores_ok, ST_RESTORES_OK);
SPICE_STAT_ATTR(restores_rejected, ST_RESTORES_REJECTED);
SPICE_STAT_ATTR(restores_killed, ST_RESTORES_KILLED);
SPICE_STAT_ATTR(dry_runs, ST_DRY_RUNS);
SPICE_STAT_ATTR(pages_mapped, ST_PAGES_MAPPED);
SPICE_STAT_ATTR(pages_copied, ST_PAGES_COPIED);
SPICE_STAT_ATTR(pages_prefaulted, ST_PAGES_PREFAULTED);
SPICE_STAT_ATTR(pages_precow, ST_PAGES_PRECOW);
SPICE_STAT_ATTR(prefault_errors, ST_PREFAULT_ERRORS);
SPICE_STAT_ATTR(ns_total, ST_NS_TOTAL);
SPICE_STAT_ATTR(ns_last, ST_NS_LAST);
SPICE_STAT_ATTR(ns_last_teardown, ST_NS_LAST_TEARDOWN);
SPICE_STAT_ATTR(ns_last_build, ST_NS_LAST_BUILD);
SPICE_STAT_ATTR(ns_last_prefault, ST_NS_LAST_PREFAULT);
static DEVICE_ATTR_WO(reset);
static DEVICE_ATTR_RO(files_held);
static DEVICE_ATTR_RO(requests_live);

static struct attribute *spice_stat_attrs[] = {
	&stat_attr_restores_ok.attr.attr,
	&stat_attr_restores_rejected.attr.attr,
	&stat_attr_restores_killed.attr.attr,
	&stat_attr_dry_runs.attr.attr,
	&stat_attr_pages_mapped.attr.attr,
	&stat_attr_pages_copied.attr.attr,
	&stat_attr_pages_prefaulted.attr.attr,
	&stat_attr_pages_precow.attr.attr,
	&stat_attr_prefault_errors.attr.attr,
	&stat_attr_ns_total.attr.attr,
	&stat_attr_ns_last.attr.attr,
	&stat_attr_ns_last_teardown.attr.attr,
	&stat_attr_ns_last_build.attr.attr,
	&stat_attr_ns_last_prefault.attr.attr,
	&dev_attr_reset.attr,
	&dev_attr_files_held.attr,
	&dev_attr_requests_live.attr,
	NULL,
};

static const struct attribute_group spice_stat_group = {
	.name = "stats",
	.attrs = spice_stat_attrs,
};

static const struct attribute_group *spice_groups[] = {
	&spice_stat_group,
	NULL,
};

static struct miscdevice spice_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "spice",
	.fops = &spice_fops,
	.mode = 0666,
	.groups = spice_groups,
};

/* the ABI is fixed: a layout change must bump SPICE_ABI_VERSION */
static void __init spice_abi_checks(void)
{
	BUILD_BUG_ON(sizeof(struct spice_version) != 88);
	BUILD_BUG_ON(sizeof(struct spice_table) != 16);
	BUILD_BUG_ON(sizeof(struct spice_file) != 16);
	BUILD_BUG_ON(sizeof(struct spice_vma) != 48);
	BUILD_BUG_ON(sizeof(struct spice_source) != 32);
	BUILD_BUG_ON(sizeof(struct spice_ws) != 24);
	BUILD_BUG_ON(sizeof(struct spice_range) != 16);
	BUILD_BUG_ON(sizeof(struct spice_mm) != 608);
	BUILD_BUG_ON(sizeof(struct spice_sigaction) != 32);
	BUILD_BUG_ON(sizeof(struct spice_task) != 2128);
	BUILD_BUG_ON(sizeof(struct spice_regs) != 27 * 8);
	BUILD_BUG_ON(sizeof(struct spice_restore) != 3144);
	BUILD_BUG_ON(offsetof(struct spice_restore, regs) != 2864);
	BUILD_BUG_ON(sizeof(struct spice_sigaction) != sizeof(struct sigaction));
	BUILD_BUG_ON(SPICE_NSIG != _NSIG);
	BUILD_BUG_ON(SPICE_AUXV_WORDS < AT_VECTOR_SIZE);
}

static int __init spice_init(void)
{
	int ret;

	spice_abi_checks();
	ret = misc_register(&spice_dev);

	if (!ret)
		pr_info("spice: /dev/spice ready (ABI %d)\n", SPICE_ABI_VERSION);
	return ret;
}

static void __exit spice_exit(void)
{
	misc_deregister(&spice_dev);
}

module_init(spice_init);
module_exit(spice_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("spice: one-call process state installation for restores");
