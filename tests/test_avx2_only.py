"""bench/avx2_only.py: a command run through it sees a CPU with AVX2 and no AVX-512 / AVX-VNNI (its
CPUID instructions trapped and answered without those bits), its children too, while its own
SIGSEGV handlers still get real faults; on a machine that cannot trap CPUID it is refused with the
reason. The figures it makes possible are bench/serve.py's, held to AVX2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import avx2_only  # noqa: E402

CAN_TRAP_CPUID = avx2_only.can_hold()

# CPUID leaf 7 as the process sees it, through the instruction itself (the library's own function,
# already loaded by LD_PRELOAD): AVX2, AVX512F, AVX512-VNNI, AVX-VNNI.
PROBE = """
import ctypes, os
lib = ctypes.CDLL([p for p in os.environ["LD_PRELOAD"].split() if "avx2_only" in p][0])
regs = (ctypes.c_uint32 * 4)()
lib.avx2_only_cpuid(7, 0, regs)
ebx, ecx = regs[1], regs[2]
lib.avx2_only_cpuid(7, 1, regs)
print(ebx >> 5 & 1, ebx >> 16 & 1, ecx >> 11 & 1, regs[0] >> 4 & 1)
"""


def held(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "avx2_only.py"), *command],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def ran(done: subprocess.CompletedProcess) -> bool:
    """Whether the held command ran; where CPUID cannot be trapped, it must have been refused so."""
    if CAN_TRAP_CPUID:
        return True
    assert done.returncode != 0
    assert "cannot trap CPUID" in done.stderr and "AVX2 machine" in done.stderr
    return False


def test_a_held_process_and_its_children_see_avx2_without_avx512():
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {PROBE!r}], check=True)"
    for command in (["-c", PROBE], ["-c", child]):
        done = held(sys.executable, *command)
        if ran(done):
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == ["1", "0", "0", "0"], done.stdout  # AVX2 only


def test_the_programs_own_segfault_handler_still_runs():
    """Paddle and Python's faulthandler install SIGSEGV handlers; a real fault must still reach them."""
    crash = "import faulthandler, ctypes; faulthandler.enable(); ctypes.string_at(0)"
    done = held(sys.executable, "-c", crash)
    if ran(done):
        assert done.returncode != 0
        assert "Fatal Python error: Segmentation fault" in done.stderr


def test_the_bench_names_the_hold_in_its_cpu_description():
    describe = ("import sys; sys.path.insert(0, 'bench'); import serve; print(serve.cpu_description())")
    done = held(sys.executable, "-c", describe)
    if ran(done):
        assert done.returncode == 0, done.stderr
        assert "held to AVX2 by bench/avx2_only.py" in done.stdout
    direct = subprocess.run([sys.executable, "-c", describe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "held to AVX2" not in direct.stdout and "cores (" in direct.stdout


def test_no_command_prints_the_usage():
    done = held()
    assert done.returncode == 2 and "python bench/avx2_only.py" in done.stdout
