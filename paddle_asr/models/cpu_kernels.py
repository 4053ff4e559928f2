"""Compiles cpu_kernels.cc once per machine and loads it: CPU kernels for dynamic-graph training.

Paddle compiles the C++ with its custom-operator toolchain (`paddle.utils.cpp_extension`, the C++
compiler on PATH, ~20 s) into the native-code cache (`native_build`: keyed by the source, the
compiler flags, Paddle's and Python's versions and the CPU's instruction sets; built in a temporary
directory renamed into place, under a file lock).

Where nothing can be compiled (no compiler, a failed build) or PADDLE_ASR_CPU_KERNELS=0 is set,
`get()` returns None and training uses the pure-Paddle paths of fast_cpu_ops.py, which compute the
same function more slowly; `status()` says which, and why.

    python -m paddle_asr.models.cpu_kernels    # build now (utils/setup_env.sh does), print the status
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import platform
import re
import sys
import warnings
from pathlib import Path

from paddle_asr.native_build import NativeLibrary, cache_root, cached_build, cpu_flags
from paddle_asr.native_build import build_key as _hash

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
MODULE_NAME = "paddle_asr_cpu_kernels"
# -fno-trapping-math lets GCC vectorise the float -> int conversion of exp_approx (no kernel here
# reads floating-point exception flags).
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
DISABLE_VARIABLE = "PADDLE_ASR_CPU_KERNELS"


def _link_flags(paddle_libs: Path) -> list[str]:
    # Paddle's own OpenMP runtime (Intel's libiomp5, which also serves GCC's GOMP_* calls): one
    # thread pool, sized by paddle's set_num_threads, instead of a second one from libgomp whose
    # threads would compete with MKL's.
    if (paddle_libs / "libiomp5.so").is_file():
        return [f"-L{paddle_libs}", "-liomp5", f"-Wl,-rpath,{paddle_libs}"]
    return ["-fopenmp"]


def build_key(paddle_version: str, link_flags: list[str]) -> str:
    """The cache key: what decides the binary."""
    return _hash([SOURCE.read_bytes(), " ".join(CXX_FLAGS + link_flags), paddle_version, sys.version,
                  platform.machine(), cpu_flags()])


class Kernels:
    """The ops of cpu_kernels.cc, registered with Paddle; each call returns the op's list of outputs."""

    def __init__(self, library: Path) -> None:
        from paddle.utils.cpp_extension.extension_utils import load_op_meta_info_and_register_op

        # Registered directly, not through cpp_extension's module loader, which writes a Python file
        # into the (shared) cache directory in every process.
        # Paddle's `load` has already registered them in the process that compiled them; it lists
        # only ops new to the process, so the names come from the source.
        load_op_meta_info_and_register_op(str(library))
        self.ops = set(re.findall(r"PD_BUILD_OP\((\w+)\)", SOURCE.read_text()))
        self.library = library

    def __getattr__(self, name: str):  # only for names not yet cached on the instance
        op = f"paddle_asr_{name}"
        if op not in self.__dict__.get("ops", ()):
            raise AttributeError(name)
        from paddle import _C_ops

        call = functools.partial(_C_ops._run_custom_op, op)
        setattr(self, name, call)  # training calls each op thousands of times
        return call


def _compile(work: Path, link_flags: list[str]) -> Path:
    """Builds in `work`; returns the directory holding the library (`native_build.cached_build`)."""
    from paddle.utils.cpp_extension import load

    log = io.StringIO()
    try:
        # Paddle writes the compiler's output to fd 1/2 of a subprocess; keep it out of the user's
        # log unless the build fails (then it is kept in the build log named by the error).
        with _quiet_fds(work / "build.log"), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            load(name=MODULE_NAME, sources=[str(SOURCE)], extra_cxx_cflags=list(CXX_FLAGS),
                 extra_ldflags=link_flags, build_directory=str(work), verbose=False)
    finally:
        (work / "python.log").write_text(log.getvalue())
    return work / MODULE_NAME


@contextlib.contextmanager
def _quiet_fds(path: Path):
    """Points file descriptors 1 and 2 at `path` (the compiler subprocess inherits them)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _directory() -> Path:
    import paddle

    return cache_root() / build_key(paddle.__version__, _link_flags(Path(paddle.__file__).parent / "libs"))


def _load(directory: Path) -> Kernels:
    import paddle

    link_flags = _link_flags(Path(paddle.__file__).parent / "libs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No ccache found", printed when cpp_extension is imported
        library = cached_build(directory, f"{MODULE_NAME}.so", lambda work: _compile(work, link_flags),
                               f"paddle_asr: compiling the CPU training kernels once into {directory} (~20 s)")
        return Kernels(library)


_LIBRARY = NativeLibrary("CPU training kernels", DISABLE_VARIABLE, "training on CPU uses Paddle's kernels, the "
                         "same math, slower. A C++ compiler (g++) is needed.", _directory, _load)


def get() -> Kernels | None:
    """The compiled kernels (built on first use), or None where they cannot be had (see `status`)."""
    return _LIBRARY.get()


def status() -> str:
    """'compiled (dir)', 'disabled (...)' or 'unavailable: why'; loads the kernels if not yet tried."""
    return _LIBRARY.status()


if __name__ == "__main__":
    sys.exit(_LIBRARY.main(sys.argv[1:]))
