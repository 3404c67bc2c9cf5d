/* SPDX-License-Identifier: MIT */
/* checked_syscall(): a raw syscall that fills every register the kernel must preserve (rbx, rbp,
 * rdx, rsi, rdi, r8-r10, r12-r15, xmm0-xmm15) with patterns derived from `seed` and verifies them
 * afterwards; *bad gets a bit set per clobbered register. Catches any tracer that does not put a
 * task's context back exactly. Args: nr, a1 (rdi), a2 (rsi), a3 (rdx), a4 (r10). */
#ifndef CHECKED_H
#define CHECKED_H
long checked_syscall(long nr, long a1, long a2, unsigned long seed, unsigned long *bad, long a3, long a4);
__asm__(
"	.text\n"
"	.globl checked_syscall\n"
"	.type checked_syscall,@function\n"
"checked_syscall:\n"
"	push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
"	mov 56(%rsp), %r10\n"                /* a4: 7th arg on the stack (6 pushes + ret) */
"	push %r9\n"                          /* a3 */
"	push %r8\n"                          /* bad */
"	push %rcx\n"                         /* seed */
"	push %rdx\n"                         /* a2 */
"	push %rsi\n"                         /* a1 */
"	mov %rdi, %rax\n"
"	mov %rsi, %rdi\n"
"	mov %rdx, %rsi\n"
"	mov %r9, %rdx\n"
"	mov %rcx, %rbx\n xor $0x1111, %rbx\n"
"	mov %rcx, %rbp\n xor $0x2222, %rbp\n"
"	mov %rcx, %r12\n xor $0x3333, %r12\n"
"	mov %rcx, %r13\n xor $0x4444, %r13\n"
"	mov %rcx, %r14\n xor $0x5555, %r14\n"
"	mov %rcx, %r15\n xor $0x6666, %r15\n"
"	mov %rcx, %r8\n xor $0x7777, %r8\n"
"	mov %rcx, %r9\n xor $0x0888, %r9\n"
"	movq %rbx, %xmm0\n movq %rbp, %xmm1\n movq %r12, %xmm2\n movq %r13, %xmm3\n"
"	movq %r14, %xmm4\n movq %r15, %xmm5\n movq %r8, %xmm6\n movq %r9, %xmm7\n"
"	pshufd $0x4e, %xmm0, %xmm8\n pshufd $0x4e, %xmm1, %xmm9\n pshufd $0x4e, %xmm2, %xmm10\n"
"	pshufd $0x4e, %xmm3, %xmm11\n pshufd $0x4e, %xmm4, %xmm12\n pshufd $0x4e, %xmm5, %xmm13\n"
"	pshufd $0x4e, %xmm6, %xmm14\n pshufd $0x4e, %xmm7, %xmm15\n"
"	syscall\n"
"	xor %r11, %r11\n"                    /* r11 = bad bits */
"	mov 16(%rsp), %rcx\n"                /* seed */
"	cmp 0(%rsp), %rdi\n je 1f\n or $0x1, %r11\n1:\n"
"	cmp 8(%rsp), %rsi\n je 1f\n or $0x2, %r11\n1:\n"
"	cmp 32(%rsp), %rdx\n je 1f\n or $0x4, %r11\n1:\n"
"	xor %rcx, %rbx\n cmp $0x1111, %rbx\n je 1f\n or $0x8, %r11\n1:\n"
"	xor %rcx, %rbp\n cmp $0x2222, %rbp\n je 1f\n or $0x10, %r11\n1:\n"
"	xor %rcx, %r12\n cmp $0x3333, %r12\n je 1f\n or $0x20, %r11\n1:\n"
"	xor %rcx, %r13\n cmp $0x4444, %r13\n je 1f\n or $0x40, %r11\n1:\n"
"	xor %rcx, %r14\n cmp $0x5555, %r14\n je 1f\n or $0x80, %r11\n1:\n"
"	xor %rcx, %r15\n cmp $0x6666, %r15\n je 1f\n or $0x100, %r11\n1:\n"
"	xor %rcx, %r8\n cmp $0x7777, %r8\n je 1f\n or $0x200, %r11\n1:\n"
"	xor %rcx, %r9\n cmp $0x0888, %r9\n je 1f\n or $0x400, %r11\n1:\n"
"	mov 56+40(%rsp), %rdx\n cmp %rdx, %r10\n je 1f\n or $0x800, %r11\n1:\n"
/* xmm: low qword must be pattern, high qword (xmm8-15: swapped) too */
#define CHKX(n, m, patoff, bit) \
"	movq %xmm" #n ", %rdx\n xor %rcx, %rdx\n cmp $" patoff ", %rdx\n je 1f\n or $" bit ", %r11\n1:\n" \
"	movhps %xmm" #m ", -8(%rsp)\n mov -8(%rsp), %rdx\n xor %rcx, %rdx\n cmp $" patoff ", %rdx\n je 1f\n or $" bit ", %r11\n1:\n"
CHKX(0, 8, "0x1111", "0x1000") CHKX(1, 9, "0x2222", "0x2000") CHKX(2, 10, "0x3333", "0x4000")
CHKX(3, 11, "0x4444", "0x8000") CHKX(4, 12, "0x5555", "0x10000") CHKX(5, 13, "0x6666", "0x20000")
CHKX(6, 14, "0x7777", "0x40000") CHKX(7, 15, "0x0888", "0x80000")
"	mov 24(%rsp), %r8\n or %r11, (%r8)\n"
"	add $40, %rsp\n"
"	pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"
"	ret\n"
"	.size checked_syscall, .-checked_syscall\n"
);
#endif
