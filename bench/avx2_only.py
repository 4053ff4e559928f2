"""Run a command as if on a CPU with AVX2 and no AVX-512 / AVX-VNNI (AMD Zen 3, most Intel desktops):
    python bench/avx2_only.py python bench/serve.py --precisions int8 --runtimes onnx
ONNX Runtime picks its kernels by CPUID and has no setting that holds it to AVX2 (Paddle's oneDNN
and MKL have environment variables; ONNX Runtime's MLAS none), so the issue's "streams on AVX2
alone" could not be measured on an AVX-512 machine. This builds bench/avx2_only.c with gcc (once;
exp/bench/avx2_only/) and runs the command with it preloaded: every CPUID of the command's
processes (children inherit LD_PRELOAD) is trapped and answered without the AVX-512, AVX-VNNI and
AMX bits, so every library chooses its AVX2 kernels. The cores, caches and clock stay this CPU's: a
figure measured so is "this CPU held to AVX2", not a Zen 3's, and says so (`describe`). It needs
CPUID faulting (cpuid_fault in /proc/cpuinfo: Intel CPUs since Ivy Bridge, KVM guests); without it
the command is refused with that reason.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).with_suffix(".c")
GLIBC_HWCAPS = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX512ER,-AVX512PF"
HELD = "PADDLE_ASR_HELD_TO_AVX2"  # set in the command's environment, for `describe`
PROBE = ("from numpy.core._multiarray_umath import __cpu_features__ as f\n"
         "print(f['AVX2'], f['AVX512F'])")


class HoldError(RuntimeError):
    pass


def can_hold() -> bool:
    """Whether this machine can trap CPUID (Linux's CPUID faulting), which holding to AVX2 needs."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "cpuid_fault" in cpuinfo.read_text().split()


def build(out_dir: Path = ROOT / "exp" / "bench" / "avx2_only") -> Path:
    """The shared library of avx2_only.c, compiled unless a build of the same source is there."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    lib = out_dir / f"avx2_only-{digest}.so"
    if not lib.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = lib.with_suffix(".partial")
        done = subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(partial), str(SOURCE), "-ldl"],
                              capture_output=True, text=True)
        if done.returncode:
            raise HoldError(f"gcc could not build {SOURCE}:\n{done.stderr}")
        partial.rename(lib)  # whole or absent: a killed build leaves only the .partial file
    return lib


def environ(lib: Path) -> dict[str, str]:
    """os.environ with `lib` preloaded (after any library already preloaded), HELD set, and glibc told
    to hide AVX-512 too (its string functions choose theirs before any library runs)."""
    preload = " ".join(filter(None, [os.environ.get("LD_PRELOAD", ""), str(lib)]))
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES", ""), GLIBC_HWCAPS]))
    return {**os.environ, "LD_PRELOAD": preload, "GLIBC_TUNABLES": tunables, HELD: "1"}


def check(lib: Path) -> None:
    """A Python under `lib` must see AVX2 and no AVX-512 (NumPy reads CPUID itself), or HoldError."""
    done = subprocess.run([sys.executable, "-c", PROBE], env=environ(lib), capture_output=True, text=True)
    if done.returncode or done.stdout.split() != ["True", "False"]:
        raise HoldError(f"{lib} does not hold Python to AVX2 here (exit {done.returncode}, NumPy sees AVX2 / "
                        f"AVX-512: {done.stdout.strip() or '?'}): {done.stderr.strip()[-500:]}")


def held_to_avx2() -> bool:
    """Whether this process runs under avx2_only (its CPUID shows no AVX-512 on a CPU that has it)."""
    return os.environ.get(HELD) == "1"


def describe(flags: set[str]) -> str:
    """The instruction sets a benchmark ran with, for its table: the CPU's own, or held to AVX2."""
    isa = [name for name in ("avx512_vnni", "avx_vnni", "avx2") if name in flags] or ["no AVX2"]
    if held_to_avx2():
        return f"held to AVX2 by bench/avx2_only.py: CPUID without AVX-512 and AVX-VNNI; the CPU has {', '.join(isa)}"
    return ", ".join(isa)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    try:
        lib = build()
        check(lib)
    except HoldError as e:
        raise SystemExit(f"avx2_only: {e}") from None
    os.execvpe(argv[0], argv, environ(lib))


if __name__ == "__main__":
    main(sys.argv[1:])
