"""The CTC prefix beam search compiled (ctc_prefix_beam.cc), loaded with ctypes: the beam that
`search.CtcPrefixBeam` keeps, bit for bit, at a tenth of the Python's cost. A streaming server runs
this search for every chunk of every stream; in Python it held the interpreter lock for ~4 ms a chunk
of 16 frames of 4,233 units, compiled it takes ~0.5 ms and lets go of the lock (ctypes does) while it
runs (bench/RESULTS.md).

Built once per machine with the C++ compiler on PATH (g++) into the native-code cache
(`native_build`). Where it cannot be built, or PADDLE_ASR_COMPILED_SEARCH=0 is set, `get()` returns
None and `CtcPrefixBeam` runs the Python search; `status()` says which, and why.

    python -m paddle_asr.decode.compiled_search    # build now (utils/setup_env.sh does), print the status
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from paddle_asr.native_build import NativeLibrary, build_key, cache_root, cached_build

SOURCE = Path(__file__).with_name("ctc_prefix_beam.cc")
LIBRARY = "libctc_prefix_beam.so"
# No -ffast-math and no contraction: every double operation must be the Python search's.
CXX_FLAGS = ["-O2", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off"]
DISABLE_VARIABLE = "PADDLE_ASR_COMPILED_SEARCH"


class CompiledBeams:
    """The library's functions, with their C signatures."""

    def __init__(self, library: Path) -> None:
        lib = ctypes.CDLL(str(library))
        lib.ctc_beam_new.restype = ctypes.c_void_p
        lib.ctc_beam_new.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.ctc_beam_free.argtypes = [ctypes.c_void_p]
        lib.ctc_beam_advance.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.ctc_beam_count.restype = ctypes.c_int
        lib.ctc_beam_count.argtypes = [ctypes.c_void_p]
        lib.ctc_beam_hyp.restype = ctypes.c_int
        lib.ctc_beam_hyp.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                     ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double)]
        self.lib, self.library = lib, library


class CompiledBeam:
    """One search's beam in the library: `advance` float32 [T, V] log-probs, read `hyps()`."""

    def __init__(self, beams: CompiledBeams, beam_size: int, blank: int) -> None:
        self._lib = beams.lib
        self._handle = ctypes.c_void_p(self._lib.ctc_beam_new(beam_size, blank))
        self._tokens = np.zeros(256, np.int32)

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.ctc_beam_free(handle)

    def advance(self, log_probs: np.ndarray) -> None:
        x = np.ascontiguousarray(log_probs, dtype=np.float32)
        self._lib.ctc_beam_advance(self._handle, x.ctypes.data, x.shape[0], x.shape[1])

    def hyps(self) -> list[tuple[tuple[int, ...], tuple[float, float]]]:
        """The beam as `CtcPrefixBeam.hyps`: (prefix, (pb, pnb)), best first."""
        return [self.hyp(i) for i in range(self._lib.ctc_beam_count(self._handle))]

    def hyp(self, i: int) -> tuple[tuple[int, ...], tuple[float, float]]:
        pb, pnb = ctypes.c_double(), ctypes.c_double()
        n = self._lib.ctc_beam_hyp(self._handle, i, self._tokens.ctypes.data, len(self._tokens),
                                   ctypes.byref(pb), ctypes.byref(pnb))
        if n > len(self._tokens):
            self._tokens = np.zeros(2 * n, np.int32)
            return self.hyp(i)
        return tuple(self._tokens[:n].tolist()), (pb.value, pnb.value)


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    return cxx


def _compile(work: Path, cxx: str) -> Path:
    with open(work / "build.log", "wb") as log:
        subprocess.run([cxx, *CXX_FLAGS, str(SOURCE), "-o", str(work / LIBRARY)], stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    return work


def _directory() -> Path:
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return cache_root() / ("ctc_prefix_beam-" + build_key([SOURCE.read_bytes(), " ".join(CXX_FLAGS), cxx, version,
                                                           platform.machine()]))


def _load(directory: Path) -> CompiledBeams:
    cxx = _compiler()
    return CompiledBeams(cached_build(directory, LIBRARY, lambda work: _compile(work, cxx),
                                      f"paddle_asr: compiling the CTC prefix beam search once into {directory}"))


_LIBRARY = NativeLibrary("CTC prefix beam search", DISABLE_VARIABLE,
                         "decoding uses the Python search, the same results, slower. A C++ compiler (g++) is needed.",
                         _directory, _load)


def get() -> CompiledBeams | None:
    """The compiled search (built on first use), or None where it cannot be had (see `status`)."""
    return _LIBRARY.get()


def status() -> str:
    """'compiled (dir)', 'disabled (...)' or 'unavailable: why'; loads the library if not yet tried."""
    return _LIBRARY.status()


if __name__ == "__main__":
    sys.exit(_LIBRARY.main(sys.argv[1:]))
