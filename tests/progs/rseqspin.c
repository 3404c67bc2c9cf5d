/* SPDX-License-Identifier: MIT */
/* Spins inside an rseq critical section (glibc's registered rseq area) and prints "abort N" each
 * time the kernel aborts it (preemption, signal, migration, or a tracer applying the fixup). */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/rseq.h>

void spin_in_cs(volatile unsigned long long *rseq_cs);
__asm__(
"	.data\n"
"	.balign 32\n"
"cs_desc:\n"
"	.long 0, 0\n"
"	.quad cs_start, cs_end - cs_start, cs_abort\n"
"	.text\n"
"	.globl spin_in_cs\n"
"spin_in_cs:\n"
"	lea cs_desc(%rip), %rax\n"
"	mov %rax, (%rdi)\n"
"cs_start:\n"
"	jmp cs_start\n"
"cs_end:\n"
"	.long 0x53053053\n"   /* RSEQ_SIG, right before the abort handler */
"cs_abort:\n"
"	ret\n"
);

int main(void)
{
	struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (__rseq_size == 0) {
		printf("no rseq\n");
		return 1;
	}
	printf("ready\n");
	for (unsigned long n = 1;; n++) {
		spin_in_cs((volatile unsigned long long *)&rs->rseq_cs);
		printf("abort %lu\n", n);
	}
}
