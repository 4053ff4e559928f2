"""Compiles cpu_kernels.cc once per machine and loads it: CPU kernels for dynamic-graph training.

Paddle compiles the C++ with its custom-operator toolchain (`paddle.utils.cpp_extension`, the C++
compiler on PATH, ~20 s) into a cache directory keyed by the source, the compiler flags, Paddle's and
Python's versions and the CPU's instruction sets, so a change to any of them builds afresh and a
cache shared between machines never hands one a binary built for another. The build goes into a
temporary directory that is renamed into place when it is complete (a killed build leaves nothing
a later run would trust), under a file lock (data-parallel processes start together).

Where nothing can be compiled (no compiler, a failed build) or PADDLE_ASR_CPU_KERNELS=0 is set,
`get()` returns None and training uses the pure-Paddle paths of fast_cpu_ops.py, which compute the
same function more slowly; `status()` says which, and why.

    python -m paddle_asr.models.cpu_kernels    # build now (utils/setup_env.sh does), print the status
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import os
import platform
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
MODULE_NAME = "paddle_asr_cpu_kernels"
# -fno-trapping-math lets GCC vectorise the float -> int conversion of exp_approx (no kernel here
# reads floating-point exception flags).
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
DISABLE_VARIABLE = "PADDLE_ASR_CPU_KERNELS"
CACHE_VARIABLE = "PADDLE_ASR_KERNEL_CACHE"

_loaded: Kernels | None = None
_status: str | None = None


def cache_root() -> Path:
    """$PADDLE_ASR_KERNEL_CACHE, else $XDG_CACHE_HOME/paddle_asr/kernels (~/.cache by default)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paddle_asr" / "kernels"


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    return next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("flags")), "")


def _link_flags(paddle_libs: Path) -> list[str]:
    # Paddle's own OpenMP runtime (Intel's libiomp5, which also serves GCC's GOMP_* calls): one
    # thread pool, sized by paddle's set_num_threads, instead of a second one from libgomp whose
    # threads would compete with MKL's.
    if (paddle_libs / "libiomp5.so").is_file():
        return [f"-L{paddle_libs}", "-liomp5", f"-Wl,-rpath,{paddle_libs}"]
    return ["-fopenmp"]


def build_key(paddle_version: str, link_flags: list[str]) -> str:
    """The cache key: what decides the binary."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CXX_FLAGS + link_flags).encode(), paddle_version.encode(),
                 sys.version.encode(), platform.machine().encode(), _cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


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


def _compile(final_dir: Path, link_flags: list[str]) -> None:
    """Builds into a temporary directory next to `final_dir`, then renames it into place."""
    from paddle.utils.cpp_extension import load

    final_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=final_dir.name + ".tmp-", dir=final_dir.parent))
    log = io.StringIO()
    try:
        # Paddle writes the compiler's output to fd 1/2 of a subprocess; keep it out of the user's
        # log unless the build fails (then it is kept in the build log named by the error).
        with _quiet_fds(work / "build.log"), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            load(name=MODULE_NAME, sources=[str(SOURCE)], extra_cxx_cflags=list(CXX_FLAGS),
                 extra_ldflags=link_flags, build_directory=str(work), verbose=False)
        built = work / MODULE_NAME / f"{MODULE_NAME}.so"
        if not built.is_file():
            raise RuntimeError(f"the build produced no {built.name}")
        if final_dir.exists():  # a directory without the library: not ours to trust
            shutil.rmtree(final_dir)
        os.replace(work / MODULE_NAME, final_dir)
    except BaseException:
        kept = final_dir.parent / f"{final_dir.name}.failed-build.log"
        with contextlib.suppress(OSError):
            kept.write_text(log.getvalue() + "\n" + (work / "build.log").read_text(errors="replace"))
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


def get() -> Kernels | None:
    """The compiled kernels (built on first use), or None where they cannot be had (see `status`)."""
    global _loaded, _status
    if _status is not None:
        return _loaded
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        _status = f"disabled ({DISABLE_VARIABLE}=0)"
        return None
    import paddle

    libs = Path(paddle.__file__).parent / "libs"
    link_flags = _link_flags(libs)
    directory = cache_root() / build_key(paddle.__version__, link_flags)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No ccache found", printed when cpp_extension is imported
            if not (directory / f"{MODULE_NAME}.so").is_file():
                directory.parent.mkdir(parents=True, exist_ok=True)
                with open(directory.parent / f"{directory.name}.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not (directory / f"{MODULE_NAME}.so").is_file():  # another process may have built it
                        print(f"paddle_asr: compiling the CPU training kernels once into {directory} (~20 s)",
                              file=sys.stderr, flush=True)
                        _compile(directory, link_flags)
            _loaded = Kernels(directory / f"{MODULE_NAME}.so")
        _status = f"compiled ({directory})"
    except Exception as e:  # noqa: BLE001 - any failure leaves training on Paddle's kernels
        _loaded = None
        _status = (f"unavailable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                   f"(build log: {directory.parent / (directory.name + '.failed-build.log')})")
        print(f"paddle_asr: warning: could not compile the CPU training kernels ({_status}); "
              f"training on CPU uses Paddle's kernels, the same math, slower. A C++ compiler (g++) is needed.",
              file=sys.stderr, flush=True)
    return _loaded


def status() -> str:
    """'compiled (dir)', 'disabled (...)' or 'unavailable: why'; loads the kernels if not yet tried."""
    get()
    assert _status is not None
    return _status


if __name__ == "__main__":
    # --quiet (utils/setup_env.sh): say nothing when the kernels are there; a build and a failure
    # speak for themselves on stderr.
    text = status()
    if "--quiet" not in sys.argv[1:]:
        print(f"paddle_asr CPU training kernels: {text}")
    sys.exit(0 if _loaded is not None or os.environ.get(DISABLE_VARIABLE) == "0" else 1)
