// SPDX-License-Identifier: GPL-2.0
/* Request builder and helpers for the in-guest tests of spice.ko. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cpuid.h>
#include <elf.h>
#include <asm/prctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include "common.h"

struct spice_version g_ver;
int g_dev = -1;
struct counters *g_cnt;

void rb_init(struct rb *r)
{
	memset(&r->hdr, 0, sizeof(r->hdr));
	r->nfiles = r->nvmas = r->nsrcs = r->nws = r->nkeep = 0;
	r->xsave_len = 0;
	r->hdr.magic = SPICE_REQ_MAGIC;
	r->hdr.version = SPICE_ABI_VERSION;
	r->hdr.hdr_size = sizeof(r->hdr);
	r->hdr.mm.exe_file = -1;
	r->hdr.task.ss_flags = SS_DISABLE;
	r->hdr.regs.cs = 0x33;
	r->hdr.regs.ss = 0x2b;
	r->hdr.regs.flags = 0x202;
}

int rb_file(struct rb *r, int fd, uint32_t role, uint32_t flags)
{
	struct spice_file *f = &r->files[r->nfiles];

	f->fd = fd;
	f->role = role;
	f->flags = flags;
	f->reserved = 0;
	return r->nfiles++;
}

struct spice_vma *rb_vma(struct rb *r, uint64_t start, uint64_t end, uint32_t prot,
			 uint32_t flags, uint32_t kind, int file, uint64_t pgoff)
{
	struct spice_vma *v = &r->vmas[r->nvmas++];

	memset(v, 0, sizeof(*v));
	v->start = start;
	v->end = end;
	v->prot = prot;
	v->flags = flags;
	v->kind = kind;
	v->file = file;
	v->pgoff = pgoff;
	return v;
}

void rb_src(struct rb *r, uint64_t start, uint64_t nr, uint64_t off, uint32_t file)
{
	struct spice_source *s = &r->srcs[r->nsrcs++];

	s->start = start;
	s->nr_pages = nr;
	s->offset = off;
	s->file = file;
	s->reserved = 0;
}

void rb_ws(struct rb *r, uint64_t start, uint64_t nr, uint32_t flags)
{
	struct spice_ws *w = &r->ws[r->nws++];

	w->start = start;
	w->nr_pages = nr;
	w->flags = flags;
	w->reserved = 0;
}

/* keep every special mapping of the kernel ([vdso], [vvar]...) */
void rb_keep_vdso(struct rb *r)
{
	static char maps[65536];
	char *line, *save;

	if (read_file("/proc/self/maps", maps, sizeof(maps)) < 0)
		return;
	for (line = strtok_r(maps, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		unsigned long s, e;

		if (!strstr(line, "[vdso]") && !strstr(line, "[vvar"))
			continue;
		if (sscanf(line, "%lx-%lx", &s, &e) != 2)
			continue;
		r->keep[r->nkeep].start = s;
		r->keep[r->nkeep].end = e;
		r->nkeep++;
	}
}

static uint32_t put_table(uint8_t *buf, uint32_t *pos, struct spice_table *t,
			  const void *src, uint32_t count, uint32_t esize)
{
	t->count = count;
	t->entry_size = esize;
	t->reserved = 0;
	t->offset = count ? *pos : 0;
	if (count) {
		memcpy(buf + *pos, src, (size_t)count * esize);
		*pos += (count * esize + 7) & ~7U;
	}
	return t->offset;
}

struct spice_restore *rb_build(const struct rb *r, size_t *len)
{
	size_t total = sizeof(r->hdr) + sizeof(r->files) + sizeof(r->vmas) +
		       sizeof(r->srcs) + sizeof(r->ws) + sizeof(r->keep) +
		       sizeof(r->xsave) + 64;
	uint8_t *buf = calloc(1, total);
	struct spice_restore *h = (struct spice_restore *)buf;
	uint32_t pos = sizeof(r->hdr);

	*h = r->hdr;
	put_table(buf, &pos, &h->files, r->files, r->nfiles, sizeof(r->files[0]));
	put_table(buf, &pos, &h->vmas, r->vmas, r->nvmas, sizeof(r->vmas[0]));
	put_table(buf, &pos, &h->sources, r->srcs, r->nsrcs, sizeof(r->srcs[0]));
	put_table(buf, &pos, &h->ws, r->ws, r->nws, sizeof(r->ws[0]));
	put_table(buf, &pos, &h->keep, r->keep, r->nkeep, sizeof(r->keep[0]));
	put_table(buf, &pos, &h->xsave, r->xsave, r->xsave_len, 1);
	h->total_size = pos;
	*len = pos;
	return h;
}

int cpu_has_xsave(void)
{
	unsigned int a, b, c, d;

	__cpuid(1, a, b, c, d);
	return !!(c & (1u << 27));	/* OSXSAVE */
}

/* Standard-format (uabi) xsave image of the current FPU state. */
uint32_t capture_xsave(uint8_t *buf, uint32_t size, uint64_t allowed)
{
	memset(buf, 0, size);
	if (cpu_has_xsave()) {
		uint32_t lo, hi;
		uint64_t *xstate_bv = (uint64_t *)(buf + 512);

		__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
		lo &= (uint32_t)allowed;
		hi &= (uint32_t)(allowed >> 32);
		__asm__ volatile("xsave64 (%0)" : : "r"(buf), "a"(lo), "d"(hi) : "memory");
		*xstate_bv &= allowed;
	} else {
		__asm__ volatile("fxsave64 (%0)" : : "r"(buf) : "memory");
		*(uint64_t *)(buf + 512) = 3;	/* FP | SSE */
	}
	return size;
}

uint64_t get_fs_base(void)
{
	uint64_t v = 0;

	rsys(SYS_arch_prctl, ARCH_GET_FS, (long)&v, 0, 0, 0, 0);
	return v;
}

int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	size_t n = 0;
	ssize_t r;

	if (fd < 0)
		return -1;
	while (n + 1 < size && (r = read(fd, buf + n, size - 1 - n)) > 0)
		n += r;
	buf[n] = 0;
	close(fd);
	return (int)n;
}

/* a counter from /sys/class/misc/spice/stats/ */
long read_stat(const char *name)
{
	char path[128], buf[64];

	snprintf(path, sizeof(path), "/sys/class/misc/spice/stats/%s", name);
	if (read_file(path, buf, sizeof(buf)) <= 0)
		return -1;
	return strtol(buf, NULL, 10);
}

int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t w = write(fd, p, len);

		if (w <= 0)
			return -1;
		p += w;
		len -= w;
	}
	return 0;
}

void pattern_fill(void *p, size_t len, uint32_t seed)
{
	uint32_t *w = p;
	size_t i;

	for (i = 0; i < len / 4; i++)
		w[i] = seed * 2654435761u + (uint32_t)i * 40503u + 0x9e3779b9u;
}

/* mov $231,%eax; mov $77,%edi; syscall; jmp . */
static const uint8_t exit_blob[] = {
	0xb8, 0xe7, 0x00, 0x00, 0x00, 0xbf, MINI_EXIT, 0x00, 0x00, 0x00,
	0x0f, 0x05, 0xeb, 0xfe,
};

static int make_file(const char *path, int pages, uint32_t seed, int mode, int oflags)
{
	static uint8_t page[PAGE];
	int fd, i;

	unlink(path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, mode);
	for (i = 0; i < pages; i++) {
		pattern_fill(page, PAGE, seed + i);
		write_all(fd, page, PAGE);
	}
	close(fd);
	return open(path, oflags);
}

void mini_build(struct mini *m, int with_fpu)
{
	static uint8_t page[PAGE];
	struct rb *r = &m->rb;
	uint64_t b = 0x300000000000ULL;
	int fp, fd, fm, fe;

	m->base = b;
	m->pages_fd = make_file("/tmp/spice-mini-pages", 4, 100, 0644, O_RDWR);
	memset(page, 0xcc, PAGE);
	memcpy(page, exit_blob, sizeof(exit_blob));
	pwrite(m->pages_fd, page, PAGE, 0);
	m->data_fd = make_file("/tmp/spice-mini-data", 2, 200, 0644, O_RDONLY);
	m->exe_fd = make_file("/tmp/spice-mini-exe", 1, 300, 0755, O_RDONLY);
	m->memfd = memfd_create("spice-mini", 0);
	pattern_fill(page, PAGE, 400);
	write_all(m->memfd, page, PAGE);

	rb_init(r);
	fp = rb_file(r, m->pages_fd, SPICE_FILE_PAGES, 0);
	fd = rb_file(r, m->data_fd, SPICE_FILE_MAP, 0);
	fm = rb_file(r, m->memfd, SPICE_FILE_MEMFD, 0);
	fe = rb_file(r, m->exe_fd, SPICE_FILE_EXE, 0);
	rb_keep_vdso(r);

	rb_vma(r, b, b + PAGE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
	       SPICE_VMA_ANON_PRIVATE, -1, 0);
	rb_src(r, b, 1, 0, fp);
	rb_vma(r, b + 0x10000, b + 0x14000, PROT_READ | PROT_WRITE,
	       MAP_PRIVATE | MAP_ANONYMOUS, SPICE_VMA_ANON_PRIVATE, -1, 0);
	rb_src(r, b + 0x10000, 1, PAGE, fp);
	rb_src(r, b + 0x12000, 1, 2 * PAGE, fp);
	rb_vma(r, b + 0x20000, b + 0x21000, PROT_READ | PROT_WRITE, MAP_PRIVATE,
	       SPICE_VMA_FILE_PRIVATE, fd, 0);
	rb_vma(r, b + 0x30000, b + 0x31000, PROT_READ, MAP_SHARED,
	       SPICE_VMA_FILE_SHARED, fd, 1);
	rb_vma(r, b + 0x40000, b + 0x41000, PROT_READ | PROT_WRITE,
	       MAP_SHARED | MAP_ANONYMOUS, SPICE_VMA_ANON_SHARED, fm, 0);
	rb_vma(r, b + 0x50000, b + 0x52000, PROT_READ | PROT_WRITE,
	       MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, SPICE_VMA_ANON_PRIVATE, -1, 0);
	rb_src(r, b + 0x51000, 1, 3 * PAGE, fp);
	rb_ws(r, b, 1, 0);
	rb_ws(r, b + 0x10000, 2, SPICE_WS_WRITE);
	r->hdr.prefault = SPICE_PREFAULT_WS;

	r->hdr.flags = SPICE_RF_REGS | SPICE_RF_SIGMASK | SPICE_RF_MM;
	r->hdr.regs.ip = b;
	r->hdr.regs.sp = b + 0x52000 - 64;
	r->hdr.regs.fs_base = get_fs_base();
	r->hdr.mm.start_code = b;
	r->hdr.mm.end_code = b + PAGE;
	r->hdr.mm.start_data = b + 0x10000;
	r->hdr.mm.end_data = b + 0x11000;
	r->hdr.mm.start_brk = b + 0x14000;
	r->hdr.mm.brk = b + 0x14000;
	r->hdr.mm.start_stack = b + 0x51f00;
	r->hdr.mm.arg_start = b + 0x10000;
	r->hdr.mm.arg_end = b + 0x10010;
	r->hdr.mm.env_start = b + 0x10010;
	r->hdr.mm.env_end = b + 0x10020;
	r->hdr.mm.auxv_words = 4;
	r->hdr.mm.auxv[0] = AT_PAGESZ;
	r->hdr.mm.auxv[1] = PAGE;
	r->hdr.mm.exe_file = fe;
	r->hdr.task.sigaction_mask = 1ULL << (SIGUSR1 - 1);
	r->hdr.task.act[SIGUSR1 - 1].handler = b;
	r->hdr.task.act[SIGUSR1 - 1].flags = SA_RESTORER;
	r->hdr.task.act[SIGUSR1 - 1].restorer = b;
	if (with_fpu) {
		uint32_t sz = g_ver.xsave_size < 576 ? 576 : g_ver.xsave_size;

		r->hdr.flags |= SPICE_RF_FPU;
		r->xsave_len = capture_xsave(r->xsave, sz, g_ver.xfeatures);
	}
}

void mini_close(struct mini *m)
{
	close(m->pages_fd);
	close(m->data_fd);
	close(m->memfd);
	close(m->exe_fd);
}
