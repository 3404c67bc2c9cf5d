/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the C workloads: EINTR-safe I/O and sleep, the output line protocol, and the
 * memory patterns/checksums.
 *
 * Output protocol (parsed by compat-tests/harness.py): one line per step, appended with a single
 * write() to an O_APPEND file, "tick=N role=R pid=P token=T key=value ...". On any inconsistency a
 * workload appends "FAIL role=R pid=P <reason>" and exits 1.
 *
 * After a CRIU restore a syscall that was interrupted by the dump (e.g. nanosleep) returns EINTR,
 * and others may too: every call here retries on EINTR.
 */
#ifndef WORKLOAD_COMMON_H
#define WORKLOAD_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static int out_fd = -1;
static const char *role = "main";

static ssize_t write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, p + done, len - done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/* read exactly len bytes; returns len, 0 on EOF before any byte, -1 on error or short EOF */
static ssize_t read_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	size_t done = 0;

	while (done < len) {
		ssize_t n = read(fd, p + done, len - done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			return done == 0 ? 0 : -1;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/* one line, one write(): lines of concurrent writers to the O_APPEND file never interleave */
static void emit(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	if (write_all(out_fd, line, (size_t)n) < 0)
		_exit(3);
}

static void __attribute__((noreturn, format(printf, 1, 2))) fail(const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	emit("FAIL role=%s pid=%d %s", role, (int)getpid(), msg);
	_exit(1);
}

/* sleep about ms milliseconds; an EINTR (signal, or the return of a restored interrupted
 * nanosleep) resumes with the remaining time, clamped because a restored rem may be anything */
static void sleep_ms(long ms)
{
	struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem;

	while (nanosleep(&req, &rem) < 0) {
		if (errno != EINTR)
			fail("nanosleep: %s", strerror(errno));
		if (rem.tv_sec > req.tv_sec || (rem.tv_sec == req.tv_sec && rem.tv_nsec > req.tv_nsec) ||
		    rem.tv_sec < 0 || rem.tv_nsec < 0 || rem.tv_nsec >= 1000000000L)
			return;
		req = rem;
	}
}

static uint64_t random_u64(void)
{
	uint64_t v = 0;

	while (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v)) {
		if (errno != EINTR)
			fail("getrandom: %s", strerror(errno));
	}
	return v | 1;
}

/* the value of word i of a region filled from seed: every word differs, so a wrong page, an
 * offset page or a zero page all show up */
static inline uint64_t pattern_word(uint64_t seed, size_t i)
{
	uint64_t x = seed ^ ((uint64_t)i * 0x9E3779B97F4A7C15ULL);

	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ULL;
	return x ^ (x >> 29);
}

static void pattern_fill(void *mem, size_t bytes, uint64_t seed)
{
	uint64_t *w = mem;

	for (size_t i = 0; i < bytes / 8; i++)
		w[i] = pattern_word(seed, i);
}

/* index of the first word that differs from the pattern, or -1 */
static long pattern_check(const void *mem, size_t bytes, uint64_t seed)
{
	const uint64_t *w = mem;

	for (size_t i = 0; i < bytes / 8; i++)
		if (w[i] != pattern_word(seed, i))
			return (long)i;
	return -1;
}

/* FNV-1a over 64-bit words, computed from the memory as it is now */
static uint64_t checksum(const void *mem, size_t bytes)
{
	const uint64_t *w = mem;
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < bytes / 8; i++) {
		h ^= w[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static void open_output(const char *path)
{
	out_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (out_fd < 0) {
		perror(path);
		exit(2);
	}
}

#endif
