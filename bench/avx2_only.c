/* Hold a process to AVX2: preloaded (LD_PRELOAD), it makes the CPUID instruction trap
 * (arch_prctl ARCH_SET_CPUID, "CPUID faulting", which Linux offers where the CPU or hypervisor
 * has it: cpuid_fault in /proc/cpuinfo) and answers every CPUID as the CPU would, less the
 * AVX-512, AVX-VNNI, AVX512-BF16/FP16 and AMX bits. Libraries that pick their kernels by CPUID
 * (ONNX Runtime's MLAS, oneDNN, MKL, NumPy) then run the kernels of an AVX2 CPU such as AMD Zen 3,
 * on this CPU's cores and clock. Built and used by bench/avx2_only.py. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
typedef sighandler_t (*signal_fn)(int, sighandler_t);
static sigaction_fn real_sigaction;
static signal_fn real_signal;
/* The SIGSEGV handler the program installs is kept here and called for every fault that is not a
 * CPUID (Paddle and Python's faulthandler install one); ours stays the one the kernel calls. */
static struct sigaction program_handler;

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void hide_bits(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    if (leaf == 7 && subleaf == 0) {
        /* EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL */
        r[1] &= ~(1u << 16 | 1u << 17 | 1u << 21 | 1u << 26 | 1u << 27 | 1u << 28 | 1u << 30 | 1u << 31);
        /* ECX: AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        r[2] &= ~(1u << 1 | 1u << 6 | 1u << 11 | 1u << 12 | 1u << 14);
        /* EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512_FP16, AMX-TILE, AMX-INT8 */
        r[3] &= ~(1u << 2 | 1u << 3 | 1u << 8 | 1u << 22 | 1u << 23 | 1u << 24 | 1u << 25);
    } else if (leaf == 7 && subleaf == 1) {
        r[0] &= ~(1u << 4 | 1u << 5); /* AVX-VNNI, AVX512_BF16 */
    }
}

/* A CPUID as this process sees it (the instruction itself, so it traps like any other caller's). */
void avx2_only_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    __asm__ volatile("cpuid" : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3]) : "a"(leaf), "c"(subleaf));
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    greg_t *reg = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)reg[REG_RIP];
    if (ip[0] == 0x0f && ip[1] == 0xa2) { /* CPUID */
        uint32_t r[4], leaf = (uint32_t)reg[REG_RAX], subleaf = (uint32_t)reg[REG_RCX];
        set_cpuid(1);
        avx2_only_cpuid(leaf, subleaf, r);
        set_cpuid(0);
        hide_bits(leaf, subleaf, r);
        reg[REG_RAX] = r[0], reg[REG_RBX] = r[1], reg[REG_RCX] = r[2], reg[REG_RDX] = r[3];
        reg[REG_RIP] += 2;
        return;
    }
    if ((program_handler.sa_flags & SA_SIGINFO) && program_handler.sa_sigaction) {
        program_handler.sa_sigaction(sig, info, context);
    } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
        program_handler.sa_handler(sig);
    } else { /* the default action: the fault repeats on return and ends the process */
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        real_sigaction(SIGSEGV, &dfl, NULL);
    }
}

static void resolve(void) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (!real_signal) real_signal = (signal_fn)dlsym(RTLD_NEXT, "signal");
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    resolve();
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = program_handler;
    if (act) program_handler = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    resolve();
    if (sig != SIGSEGV) return real_signal(sig, handler);
    sighandler_t old = program_handler.sa_handler;  /* a union with sa_sigaction, as glibc returns it */
    program_handler = (struct sigaction){.sa_handler = handler, .sa_flags = SA_RESTART};
    return old;
}

__attribute__((constructor)) static void hold_to_avx2(void) {
    resolve();
    /* SA_ONSTACK: a thread's alternate stack (Python's faulthandler sets one) serves a stack overflow. */
    struct sigaction ours = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK};
    sigemptyset(&ours.sa_mask);
    real_sigaction(SIGSEGV, &ours, NULL);
    if (set_cpuid(0) != 0) {
        fprintf(stderr, "avx2_only: this machine cannot trap CPUID (arch_prctl ARCH_SET_CPUID: %s): its CPU or "
                "hypervisor lacks CPUID faulting (no cpuid_fault in /proc/cpuinfo). Run the benchmark on an "
                "AVX2 machine instead.\n", strerror(errno));
        _exit(3);
    }
}
