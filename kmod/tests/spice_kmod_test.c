// SPDX-License-Identifier: GPL-2.0
/*
 * In-guest test of spice.ko, run as /test of the kmod-ci initramfs (or by
 * hand as root where the module is loaded).  Usage: spice_kmod_test [FUZZ_N]
 * Ends with "N passed, M failed"; exit status 0 only if nothing failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include "common.h"

void test_version(void)
{
	struct spice_version v;

	memset(&v, 0xff, sizeof(v));
	CHECK(ioctl(g_dev, SPICE_IOC_VERSION, &v) == 0, "SPICE_IOC_VERSION: %s", strerror(errno));
	CHECK(v.abi_version == SPICE_ABI_VERSION && v.size == sizeof(v) &&
	      v.req_hdr_size == sizeof(struct spice_restore), "version fields");
	CHECK(v.xsave_size >= 512 && (v.xfeatures & 3) == 3, "xsave layout %u 0x%llx",
	      v.xsave_size, (unsigned long long)v.xfeatures);
	CHECK(v.max_vmas == SPICE_MAX_VMAS && v.max_keep == SPICE_MAX_KEEP &&
	      !v.reserved[0] && !v.reserved[3], "limits and reserved");
	g_ver = v;
	printf("ok   version: abi %u, header %u bytes, xsave %u bytes, xfeatures 0x%llx, features 0x%llx\n",
	       v.abi_version, v.req_hdr_size, v.xsave_size, (unsigned long long)v.xfeatures,
	       (unsigned long long)v.features);
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	unsigned int fuzz_n = argc > 1 ? strtoul(argv[1], NULL, 0) : 10000;
	double t0 = now(), t;
	uint32_t p;

	setvbuf(stdout, NULL, _IOLBF, 0);
	g_cnt = mmap(NULL, sizeof(*g_cnt), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		     -1, 0);
	mkdir("/tmp", 01777);
	mkdir("/sys", 0755);
	mount("sysfs", "/sys", "sysfs", 0, NULL);	/* EBUSY where mounted already */
	g_dev = open(SPICE_DEVICE, O_RDWR | O_CLOEXEC);
	CHECK(g_dev >= 0, "open %s: %s", SPICE_DEVICE, strerror(errno));
	if (g_dev < 0)
		goto out;
	/* a high fd, as a restorer would use, out of the way of restored fds */
	g_dev = fcntl(g_dev, F_DUPFD_CLOEXEC, 900);

	test_version();
	CHECK(read_stat("restores_ok") >= 0, "counters in /sys/class/misc/spice/stats");
	for (p = SPICE_PREFAULT_NONE; p <= SPICE_PREFAULT_ALL; p++)
		test_restore(p, 0);
	test_restore(SPICE_PREFAULT_WS, 1);
	test_variants();
	test_errors();
	test_kill_after_teardown();
	t = now();
	if (fuzz_n)
		test_fuzz(fuzz_n);
	printf("time: %.1f s total, fuzz %.1f s\n", now() - t0, now() - t);
out:
	printf("%d passed, %d failed\n", g_cnt->passed, g_cnt->failed);
	return g_cnt->failed ? 1 : 0;
}
