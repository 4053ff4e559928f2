"""Process settings that make Paddle 3.0's dynamic graph fast on CPU (measured on the AISHELL
Conformer training step, 8 x 500 frames, 2 cores: bench/train_step.py, bench/RESULTS.md).

Paddle's own math is unchanged by any of them: they choose threads, how transposes are
materialised and how freed memory is kept.
"""

from __future__ import annotations

import ctypes
import os

import paddle

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc keep freed blocks for the next tensor instead of returning them to the system.

    Paddle's CPU allocator hands every tensor to malloc. By default glibc serves large blocks by
    mmap and trims the heap when its top is free, so each new activation page-faults its memory
    in again: a [1000, 2048] product took 5.2 ms where the GEMM itself takes 2.9 ms, and the
    training step went 2.83 -> 2.54 s with this. Peak RSS is unchanged (pages are counted when
    touched). Returns False where the C library is not glibc (nothing is changed there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20)))


def configure_cpu(num_threads: int) -> int:
    """CPU settings of the dynamic graph; returns the thread count.

    - Every core unless told otherwise: `import paddle` alone leaves CPU kernels on one thread.
    - Transposes and slices as copies, not strided views. Paddle 3.0 turns a view into the
      contiguous tensor the next kernel needs with a slow generic copy: the subsampling output's
      transpose + reshape, [8, 256, 124, 19], takes 53 ms that way and 7 ms through the transpose
      kernel, and every attention layer does four such reshapes (training step 3.5 -> 3.0 s).
      GPUs keep the views (their copies are cheap).
    - Freed memory kept for reuse (`keep_freed_memory_for_reuse`).
    """
    n = num_threads or os.cpu_count() or 1
    paddle.base.core.set_num_threads(n)
    if paddle.get_device() == "cpu":
        paddle.set_flags({"FLAGS_use_stride_kernel": False})
        keep_freed_memory_for_reuse()
    return n
