/* SPDX-License-Identifier: MIT */
/* Holds a value in xmm15 and r15 (never touched by its own code) and prints them every 5 ms:
 *   "xmm15=HEX r15=HEX"   (raw syscalls only, no libc in the loop, so nothing else uses them) */
#define _GNU_SOURCE
#include <sys/syscall.h>
#include <unistd.h>

static void hex(char *p, unsigned long v)
{
	for (int i = 15; i >= 0; i--, v >>= 4)
		p[i] = "0123456789abcdef"[v & 15];
}

int main(void)
{
	char line[] = "xmm15=0000000000000000 r15=0000000000000000\n";
	struct { long s, ns; } ts = { 0, 5000000 };
	__asm__ volatile("mov $0x1111222233334444, %%rax\n movq %%rax, %%xmm15\n mov %%rax, %%r15" ::: "rax", "r15");
	syscall(SYS_write, 1, "ready\n", 6);
	for (;;) {
		unsigned long x, r;
		__asm__ volatile("movq %%xmm15, %0\n mov %%r15, %1" : "=r"(x), "=r"(r));
		hex(line + 6, x);
		hex(line + 27, r);
		__asm__ volatile("syscall" : : "a"(SYS_write), "D"(1), "S"(line), "d"(sizeof(line) - 1)
				 : "rcx", "r11", "memory");
		__asm__ volatile("syscall" : : "a"(SYS_nanosleep), "D"(&ts), "S"(0) : "rcx", "r11", "memory");
	}
}
