"""Native code built once per machine into a shared cache: the compiled CPU training kernels
(models/cpu_kernels.py) and the compiled CTC prefix beam search (decode/compiled_search.py).

Each build goes into a directory named by a key of everything that decides the binary (source,
compiler flags, versions, CPU), so a change to any of them builds afresh and a cache shared between
machines never hands one a binary built for another. The build runs in a temporary directory that is
renamed into place when it is complete (a killed build leaves nothing a later run would trust),
under a file lock (data-parallel processes start together). A failed build leaves only
`<key>.failed-build.log` beside the key's directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

CACHE_VARIABLE = "PADDLE_ASR_KERNEL_CACHE"


def cache_root() -> Path:
    """$PADDLE_ASR_KERNEL_CACHE, else $XDG_CACHE_HOME/paddle_asr/kernels (~/.cache by default)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paddle_asr" / "kernels"


def cpu_flags() -> str:
    """The CPU's instruction-set flags (/proc/cpuinfo), or the processor's name where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    return next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("flags")), "")


def build_key(parts: Iterable[bytes | str]) -> str:
    """A short hash of what decides a binary."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def failed_build_log(directory: Path) -> Path:
    return directory.parent / f"{directory.name}.failed-build.log"


def cached_build(directory: Path, library: str, build: Callable[[Path], Path], announce: str) -> Path:
    """`directory`/`library`, built first if it is not there: `build(work)` compiles in the empty
    temporary directory `work` and returns the directory holding `library`, which becomes
    `directory`. `announce` is printed to stderr when a build starts. On failure the logs the
    build wrote in `work` (*.log) are kept in `failed_build_log(directory)` and the error raised."""
    target = directory / library
    if target.is_file():
        return target
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():  # another process built it while this one waited
            return target
        print(announce, file=sys.stderr, flush=True)
        work = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp-", dir=directory.parent))
        try:
            built = build(work)
            if not (built / library).is_file():
                raise RuntimeError(f"the build produced no {library}")
            if directory.exists():  # a directory without the library: not ours to trust
                shutil.rmtree(directory)
            os.replace(built, directory)
        except BaseException as e:
            logs = "\n".join(p.read_text(errors="replace") for p in sorted(work.rglob("*.log")))
            with contextlib.suppress(OSError):
                failed_build_log(directory).write_text(f"{type(e).__name__}: {e}\n{logs}")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


class NativeLibrary:
    """A compiled library loaded once per process, with its status line and its fallback: `get()` is
    `load(directory())` (which builds through `cached_build`), or None where it is disabled
    (`disable_variable`=0) or cannot be built (then a warning names the fallback, once)."""

    def __init__(self, what: str, disable_variable: str, fallback: str, directory: Callable[[], Path],
                 load: Callable[[Path], object]) -> None:
        self.what, self.disable_variable, self.fallback = what, disable_variable, fallback
        self._directory, self._load = directory, load
        self._loaded: object | None = None
        self._status: str | None = None

    def get(self) -> object | None:
        if self._status is not None:
            return self._loaded
        if os.environ.get(self.disable_variable, "1") == "0":
            self._status = f"disabled ({self.disable_variable}=0)"
            return None
        directory = None
        try:
            directory = self._directory()
            self._loaded = self._load(directory)
            self._status = f"compiled ({directory})"
        except Exception as e:  # noqa: BLE001 - any failure leaves the caller on its fallback
            self._loaded = None
            where = f" (build log: {failed_build_log(directory)})" if directory else ""
            self._status = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{where}"
            print(f"paddle_asr: warning: could not compile the {self.what} ({self._status}); {self.fallback}",
                  file=sys.stderr, flush=True)
        return self._loaded

    def status(self) -> str:
        """'compiled (dir)', 'disabled (...)' or 'unavailable: why'; loads the library if not yet tried."""
        self.get()
        assert self._status is not None
        return self._status

    def main(self, argv: list[str]) -> int:
        """`python -m <module> [--quiet]`: build now and print the status (--quiet, as utils/setup_env.sh
        runs it: nothing when the library is there; a build and a failure speak for themselves on stderr).
        Exits 1 where the library is wanted and cannot be had."""
        text = self.status()
        if "--quiet" not in argv:
            print(f"paddle_asr {self.what}: {text}")
        return 0 if self._loaded is not None or os.environ.get(self.disable_variable) == "0" else 1
