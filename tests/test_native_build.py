"""The native-code cache (paddle_asr/native_build.py) for each library built through it, the CPU
training kernels (models/cpu_kernels.cc) and the CTC prefix beam search (decode/ctc_prefix_beam.cc):
built once and reused by the next process, a failed build warns, leaves nothing a later run would
trust and the fallback still does the work, and the environment variable turns it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Library:
    module: str          # the module whose get() / status() load it
    library: str         # the file a build leaves in its cache directory
    what: str            # how its messages name it
    fallback: str        # a phrase of its warning: what runs instead
    disable: str         # the environment variable that turns it off
    broken: str          # a source that cannot compile
    work: str            # Python printing a JSON value: the library's work, done with or without it


LIBRARIES = [
    Library("paddle_asr.models.cpu_kernels", "paddle_asr_cpu_kernels.so", "CPU training kernels",
            "Paddle's kernels", "PADDLE_ASR_CPU_KERNELS", '#include "paddle/extension.h"\nthis is not C++;\n',
            "import paddle\nfrom paddle_asr.models import fast_cpu_ops\n"
            "x = paddle.to_tensor([[-1.0, 0.5, 2.0]])\n"
            "value = [round(v, 6) for v in fast_cpu_ops.silu(x, True).numpy()[0].tolist()]"),
    Library("paddle_asr.decode.compiled_search", "libctc_prefix_beam.so", "CTC prefix beam search",
            "Python search", "PADDLE_ASR_COMPILED_SEARCH", "this is not C++;\n",
            "import numpy as np\nfrom paddle_asr.decode.search import ctc_prefix_beam_search\n"
            "lp = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4]] * 3, np.float32))\n"
            "value = ctc_prefix_beam_search(lp, 3)"),
]


def _run(lib: Library, env: dict, source: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    patch = f"m.SOURCE = __import__('pathlib').Path({str(source)!r})\n" if source else ""
    script = (f"import json, importlib\nm = importlib.import_module({lib.module!r})\n{patch}{lib.work}\n"
              "print(json.dumps({'status': m.status(), 'loaded': m.get() is not None, 'value': value}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **env}, timeout=600)
    assert out.returncode == 0, out.stderr
    return out, json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("lib", LIBRARIES, ids=lambda lib: lib.library)
def test_a_fresh_build_is_cached_and_a_second_process_reuses_it(lib, tmp_path):
    env = {"PADDLE_ASR_KERNEL_CACHE": str(tmp_path)}
    first, result = _run(lib, env)
    assert result["loaded"] and result["status"].startswith("compiled"), result
    assert f"compiling the {lib.what} once" in first.stderr
    built = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(built) == 1 and (built[0] / lib.library).is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the temporary build is gone
    second, again = _run(lib, env)
    assert again == result
    assert "compiling" not in second.stderr  # reused


@pytest.mark.parametrize("lib", LIBRARIES, ids=lambda lib: lib.library)
def test_a_failed_build_warns_leaves_nothing_to_trust_and_the_fallback_does_the_work(lib, tmp_path):
    broken = tmp_path / "broken.cc"
    broken.write_text(lib.broken)
    cache = tmp_path / "cache"
    out, result = _run(lib, {"PADDLE_ASR_KERNEL_CACHE": str(cache)}, source=broken)
    assert not result["loaded"] and result["status"].startswith("unavailable"), result
    assert f"could not compile the {lib.what}" in out.stderr and lib.fallback in out.stderr
    logs = list(cache.glob("*.failed-build.log"))
    assert logs and "this is not C++" in logs[0].read_text()  # the compiler's message is kept
    assert not [p for p in cache.iterdir() if p.is_dir()]  # no half-built directory
    _, compiled = _run(lib, {})
    assert compiled["loaded"] and result["value"] == compiled["value"]  # the same work without it


@pytest.mark.parametrize("lib", LIBRARIES, ids=lambda lib: lib.library)
def test_disabled_by_the_environment_variable(lib):
    _, result = _run(lib, {lib.disable: "0"})
    assert not result["loaded"] and result["status"] == f"disabled ({lib.disable}=0)"
