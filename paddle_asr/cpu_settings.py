"""Process settings that make Paddle 3.0's dynamic graph fast on CPU (measured on the AISHELL
Conformer training step, 8 x 500 frames, 2 cores: bench/train_step.py, bench/RESULTS.md).

Paddle's own math is unchanged by any of them: they choose threads, which of MKL's kernels run,
how transposes are materialised and how freed memory is kept.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

# paddle is imported inside the functions: `choose_mkl_kernels` runs from paddle_asr/__init__.py,
# which must stay light (the CLI's --help imports no Paddle).

MKL_CPU_TYPE_AVX2 = "5"  # MKL's code for its AVX2 kernels (MKL_DEBUG_CPU_TYPE)


def mkl_cpu_type_for(cpuinfo: str) -> str | None:
    """The MKL_DEBUG_CPU_TYPE this CPU needs, from the text of /proc/cpuinfo, or None.

    Paddle 3.0's CPU wheel carries MKLML 2019 (libmklml_intel.so), which picks its kernels by CPU
    vendor: on an AMD processor it runs its SSE code even where the CPU has AVX2 and FMA, several
    times slower than its AVX2 kernels (or OpenBLAS) on the same products (bench/RESULTS.md). This
    MKL still honours MKL_DEBUG_CPU_TYPE (MKL 2020.1 and later dropped it). Intel CPUs, and AMD CPUs
    without AVX2, are left to MKL's own choice."""
    vendor = flags = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = value
    if vendor == "AuthenticAMD" and {"avx2", "fma"} <= set(flags.split()):
        return MKL_CPU_TYPE_AVX2
    return None


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU has VNNI (AVX-512 VNNI, AVX-VNNI or AMX), from /proc/cpuinfo's flags.

    oneDNN's INT8 kernels need it to be both fast and exact. Without it (AVX2 CPUs such as AMD Zen 3,
    AVX-512 CPUs before Cascade Lake) they multiply 8-bit pairs with vpmaddubsw, whose 16-bit sums
    saturate: INT8 then gains little speed over FP32 and loses agreement with it (bench/RESULTS.md
    has the AMD EPYC and Xeon figures)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = next((line.partition(":")[2].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def choose_mkl_kernels(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> str | None:
    """Sets MKL_DEBUG_CPU_TYPE for this process and its children where `mkl_cpu_type_for` asks for
    it and the user has not set it. MKL reads it at its first call, so this must run before any
    Paddle CPU kernel (paddle_asr/__init__.py calls it). Returns the value in force, or None."""
    if "MKL_DEBUG_CPU_TYPE" not in os.environ:
        try:
            wanted = mkl_cpu_type_for(cpuinfo_path.read_text(errors="replace"))
        except OSError:  # not Linux: nothing to read, nothing to change
            wanted = None
        if wanted is not None:
            os.environ["MKL_DEBUG_CPU_TYPE"] = wanted
    return os.environ.get("MKL_DEBUG_CPU_TYPE")

def let_idle_threads_sleep(value: str = "0") -> str:
    """Sets KMP_BLOCKTIME (how long an OpenMP thread spins after its parallel region before it
    sleeps, 200 ms by default in the Intel OpenMP that Paddle's MKL and oneDNN use) for this process
    where the user has not set it; returns the value in force. A server runs a predictor every few
    tens of milliseconds on several threads of its own (inference, final results, the web loop):
    spinning threads burned three times the CPU that one stream needs (bench/serve.py) and took it
    from the threads with work. Must run before the first Paddle CPU kernel."""
    os.environ.setdefault("KMP_BLOCKTIME", value)
    return os.environ["KMP_BLOCKTIME"]


def idle_threads_spin() -> bool:
    """Whether this process lets idle compute threads spin: no once KMP_BLOCKTIME is 0
    (`let_idle_threads_sleep`, or the user's own setting). ONNX Runtime's thread pool, which reads
    no such variable, follows it (`export.onnx_backend.OrtProgram`): its threads spin between calls
    by default, which makes one call alone 10-20 % faster but cost a server on 2 cores a quarter
    of its INT8 streams (bench/RESULTS.md)."""
    return os.environ.get("KMP_BLOCKTIME", "") != "0"


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc keep freed blocks for the next tensor instead of returning them to the system.

    Paddle's CPU allocator hands every tensor to malloc, as NumPy does its arrays. By default glibc
    serves large blocks by mmap and trims the heap when its top is free, so each new activation
    page-faults its memory in again, which costs nearly as much as the GEMM that fills it; the
    streaming server's per-stream attention caches (3 MB each for the AISHELL Conformer) cost
    three times their copy. Peak RSS is unchanged (pages are counted when touched). Returns False
    where the C library is not glibc (nothing is changed there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20)))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (which a container's cpuset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def predictor_threads(requested: int) -> int:
    """CPU threads of each predictor of `paddle-asr serve`: `requested`, or for 0 half the cores this
    process may use, at least 1. The chunk program (inference thread) and the attention decoder
    (final-result thread) run at the same time, so with every core each their threads would take
    turns on the same cores (bench/RESULTS.md: on 2 cores, 1 thread each served more streams than 2).
    Here, not in the server, so that bench/serve.py's client process resolves it without importing
    Paddle."""
    return requested or max(1, usable_cores() // 2)


def configure_cpu(num_threads: int) -> int:
    """CPU settings of the dynamic graph; returns the thread count.

    - Every core this process may use unless told otherwise (`usable_cores`: a container's cpuset,
      `taskset`): `import paddle` alone leaves CPU kernels on one thread.
    - Transposes and slices as copies, not strided views. Paddle 3.0 turns a view into the
      contiguous tensor the next kernel needs with a generic copy several times slower than the
      transpose kernel, and every attention layer does four such reshapes.
      GPUs keep the views (their copies are cheap).
    - Freed memory kept for reuse (`keep_freed_memory_for_reuse`).
    (MKL's kernels are chosen earlier, at import: `choose_mkl_kernels`.)
    """
    import paddle

    n = num_threads or usable_cores()
    paddle.base.core.set_num_threads(n)
    if paddle.get_device() == "cpu":
        paddle.set_flags({"FLAGS_use_stride_kernel": False})
        keep_freed_memory_for_reuse()
    return n
