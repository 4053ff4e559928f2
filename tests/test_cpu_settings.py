"""cpu_settings: the settings it promises are in force, MKL's kernels are chosen by CPU, and tensors keep
their values under them."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle

from paddle_asr.cpu_settings import (
    choose_mkl_kernels,
    configure_cpu,
    cpu_has_vnni,
    keep_freed_memory_for_reuse,
    let_idle_threads_sleep,
    mkl_cpu_type_for,
)


def test_configure_cpu_sets_threads_contiguous_transposes_and_malloc_reuse():
    assert configure_cpu(2) == 2
    assert paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"] is False
    assert keep_freed_memory_for_reuse() is True  # glibc here: every mallopt call was accepted
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    t = paddle.to_tensor(x)
    np.testing.assert_array_equal(t.transpose([0, 2, 1, 3]).reshape([2, 4, 15]).numpy(),
                                  x.transpose(0, 2, 1, 3).reshape(2, 4, 15))
    # A slice is a copy now: writing into it leaves the source alone.
    part = t[:, 1]
    part.add_(paddle.ones_like(part))
    np.testing.assert_array_equal(t.numpy(), x)


AMD_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx fma avx2 bmi2
processor\t: 1
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse sse2 avx fma avx2 bmi2
"""


def test_mkl_gets_its_avx2_kernels_on_amd_only():
    assert mkl_cpu_type_for(AMD_ZEN3) == "5"
    assert mkl_cpu_type_for(AMD_ZEN3.replace(" avx2", "")) is None  # an AMD CPU without AVX2
    assert mkl_cpu_type_for(AMD_ZEN3.replace("AuthenticAMD", "GenuineIntel")) is None
    assert mkl_cpu_type_for("") is None


def test_choose_mkl_kernels_sets_the_variable_unless_the_user_did(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AMD_ZEN3)
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    assert choose_mkl_kernels(cpuinfo) == "5" and os.environ["MKL_DEBUG_CPU_TYPE"] == "5"
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "2")
    assert choose_mkl_kernels(cpuinfo) == "2"
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE")
    assert choose_mkl_kernels(tmp_path / "missing") is None and "MKL_DEBUG_CPU_TYPE" not in os.environ


def test_idle_openmp_threads_sleep_unless_the_user_set_their_spin_time(monkeypatch):
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    assert let_idle_threads_sleep() == "0" and os.environ["KMP_BLOCKTIME"] == "0"
    monkeypatch.setenv("KMP_BLOCKTIME", "30")
    assert let_idle_threads_sleep() == "30"


def test_importing_the_package_chooses_the_kernels_for_this_machine():
    # A fresh process: the variable is in force from the package's import, before any Paddle kernel.
    env = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
    code = "import os, paddle_asr; print(os.environ.get('MKL_DEBUG_CPU_TYPE'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(mkl_cpu_type_for(Path("/proc/cpuinfo").read_text()))


def test_vnni_is_read_from_the_cpu_flags():
    assert not cpu_has_vnni(AMD_ZEN3)
    assert cpu_has_vnni(AMD_ZEN3.replace(" avx2", " avx2 avx512f avx512_vnni"))  # Cascade Lake, Zen 4
    assert cpu_has_vnni(AMD_ZEN3.replace(" avx2", " avx2 avx_vnni"))  # Alder Lake
    assert not cpu_has_vnni("")


def test_the_default_thread_count_is_the_cores_this_process_may_use():
    """A container's cpuset or `taskset` narrows the cores: 0 threads means those, not the host's."""
    assert os.cpu_count() >= 2, "this test needs a machine with two cores or more"
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from paddle_asr.cpu_settings import configure_cpu, predictor_threads; "
            "from paddle_asr.devices import cpu_description; "
            "print(configure_cpu(0), predictor_threads(0), cpu_description())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["1", "1"]
    assert "1 core (" in " ".join(out)
    assert configure_cpu(0) == len(os.sched_getaffinity(0))
