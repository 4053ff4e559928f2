"""The compiled CTC prefix beam search (decode/ctc_prefix_beam.cc): the beam of the Python search bit
for bit, chunk by chunk as a stream feeds it, and built once per machine into the native-code cache.
(tests/test_search.py runs both against PaddleSpeech's own loop.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paddle_asr.decode import compiled_search
from paddle_asr.decode.context_graph import ContextGraph
from paddle_asr.decode.search import CtcPrefixBeam

REPO = Path(__file__).resolve().parents[1]
AISHELL_UNITS = 4233


def peaky_log_probs(frames: int, vocab: int, seed: int, quantum: float | None = None) -> np.ndarray:
    """Log-posteriors shaped like a trained model's: blank on most frames, a few strong units."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(frames, vocab))
    logits[:, 0] += rng.uniform(0, 12, size=frames)
    speech = rng.random(frames) < 0.3
    logits[speech, rng.integers(1, vocab, size=int(speech.sum()))] += 10.0
    lp = logits - logits.max(axis=1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
    if quantum:  # exact ties among candidates and among prefix scores
        lp = np.round(lp / quantum) * quantum
    return lp.astype(np.float32)


def python_beam(beam_size: int) -> CtcPrefixBeam:
    beam = CtcPrefixBeam(beam_size)
    beam._compiled = None
    return beam


def test_the_library_builds_here_and_the_search_uses_it():
    assert compiled_search.get() is not None, compiled_search.status()
    assert compiled_search.status().startswith("compiled")
    assert CtcPrefixBeam(10)._compiled is not None
    biased = CtcPrefixBeam(10, context=ContextGraph([[5, 6]], 2.0))
    assert biased._compiled is None  # hotwords: the Python search


@pytest.mark.parametrize("quantum", [None, 0.5])
@pytest.mark.parametrize("beam_size", [1, 4, 10])
def test_chunk_by_chunk_the_beam_is_the_python_beam(beam_size, quantum):
    """An AISHELL-size vocabulary streamed in chunks of 16 frames, as the server's streams are:
    after every chunk the whole beam (prefixes, pb, pnb as floats) and the best prefix are the
    Python search's, exactly. The stream is long enough for prefixes past the 256 tokens the
    wrapper's first buffer holds."""
    lp = peaky_log_probs(1200, AISHELL_UNITS, seed=beam_size, quantum=quantum)
    compiled, python = CtcPrefixBeam(beam_size), python_beam(beam_size)
    for start in range(0, len(lp), 16):
        compiled.advance(lp[start: start + 16])
        python.advance(lp[start: start + 16])
        assert compiled.hyps == python.hyps
        assert compiled.best() == python.best()
    assert compiled.nbest() == python.nbest()
    assert max(len(p) for p, _ in compiled.hyps) > 256
    assert compiled.frames == python.frames == len(lp)


def test_scores_of_another_dtype_continue_in_python_from_the_same_beam():
    lp = peaky_log_probs(64, 300, seed=5)
    mixed, python = CtcPrefixBeam(10), python_beam(10)
    mixed.advance(lp[:32])
    mixed.advance(lp[32:].astype(np.float64))  # float64 top-k ranks float64 values: the Python search's
    python.advance(lp[:32])
    python.advance(lp[32:].astype(np.float64))
    assert mixed._compiled is None and mixed.hyps == python.hyps and mixed.nbest() == python.nbest()


def test_nan_is_refused_as_by_the_python_search():
    lp = peaky_log_probs(8, 50, seed=1)
    lp[3, 7] = np.nan
    for beam in (CtcPrefixBeam(4), python_beam(4)):
        with pytest.raises(ValueError, match="NaN in scores"):
            beam.advance(lp)


def test_impossible_tokens_keep_minus_infinity_as_in_python():
    lp = np.full((5, 3), -np.inf, dtype=np.float32)
    lp[:, 0] = 0.0
    compiled, python = CtcPrefixBeam(3), python_beam(3)
    compiled.advance(lp)
    python.advance(lp)
    assert compiled.nbest() == python.nbest()
    assert compiled.nbest()[0] == ([], 0.0) and all(s == -math.inf for _, s in compiled.nbest()[1:])


def _run_get(env: dict, source: Path | None = None) -> subprocess.CompletedProcess:
    patch = f"compiled_search.SOURCE = __import__('pathlib').Path({str(source)!r})\n" if source else ""
    script = ("import json\nfrom paddle_asr.decode import compiled_search\n" + patch +
              "from paddle_asr.decode.search import ctc_prefix_beam_search\nimport numpy as np\n"
              "lp = np.log(np.full((6, 4), 0.25, np.float32))\n"
              "print(json.dumps({'status': compiled_search.status(), 'loaded': compiled_search.get() is not None,"
              " 'nbest': ctc_prefix_beam_search(lp, 3)}))")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=300)


def test_a_fresh_build_is_cached_and_a_second_process_reuses_it(tmp_path):
    env = {"PADDLE_ASR_KERNEL_CACHE": str(tmp_path)}
    first = _run_get(env)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.splitlines()[-1])
    assert result["loaded"] and result["status"].startswith("compiled"), result
    assert "compiling the CTC prefix beam search once" in first.stderr
    built = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(built) == 1 and (built[0] / compiled_search.LIBRARY).is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the temporary build is gone
    second = _run_get(env)
    assert json.loads(second.stdout.splitlines()[-1]) == result
    assert "compiling" not in second.stderr  # reused


def test_a_failed_build_warns_leaves_nothing_to_trust_and_decoding_still_runs(tmp_path):
    broken = tmp_path / "ctc_prefix_beam.cc"
    broken.write_text("this is not C++;\n")
    cache = tmp_path / "cache"
    out = _run_get({"PADDLE_ASR_KERNEL_CACHE": str(cache)}, source=broken)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert not result["loaded"] and result["status"].startswith("unavailable"), result
    assert "could not compile the CTC prefix beam search" in out.stderr and "Python search" in out.stderr
    assert result["nbest"] == json.loads(_run_get({"PADDLE_ASR_COMPILED_SEARCH": "0"}).stdout.splitlines()[-1])["nbest"]
    logs = list(cache.glob("*.failed-build.log"))
    assert logs and "this is not C++" in logs[0].read_text()  # the compiler's message is kept
    assert not [p for p in cache.iterdir() if p.is_dir()]  # no half-built directory


def test_disabled_by_the_environment_variable():
    result = json.loads(_run_get({"PADDLE_ASR_COMPILED_SEARCH": "0"}).stdout.splitlines()[-1])
    assert not result["loaded"] and result["status"].startswith("disabled")
