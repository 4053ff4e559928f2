"""The compiled CTC prefix beam search (decode/ctc_prefix_beam.cc): the beam of the Python search bit
for bit, chunk by chunk as a stream feeds it. (tests/test_search.py runs both against PaddleSpeech's
own loop; tests/test_native_build.py its build.)"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from paddle_asr.decode import compiled_search
from paddle_asr.decode.context_graph import ContextGraph
from paddle_asr.decode.search import CtcPrefixBeam

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from prefix_search import AISHELL_UNITS, peaky_log_probs  # noqa: E402  (the bench's posteriors)


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


def test_nan_and_an_empty_vocabulary_are_refused_as_by_the_python_search():
    lp = peaky_log_probs(8, 50, seed=1)
    lp[3, 7] = np.nan
    for beam in (CtcPrefixBeam(4), python_beam(4)):
        with pytest.raises(ValueError, match="NaN in scores"):
            beam.advance(lp)
        with pytest.raises(ValueError, match=r"k=0 must be in \[1, 0\]"):
            beam.advance(np.zeros((3, 0), np.float32))


def test_impossible_tokens_keep_minus_infinity_as_in_python():
    lp = np.full((5, 3), -np.inf, dtype=np.float32)
    lp[:, 0] = 0.0
    compiled, python = CtcPrefixBeam(3), python_beam(3)
    compiled.advance(lp)
    python.advance(lp)
    assert compiled.nbest() == python.nbest()
    assert compiled.nbest()[0] == ([], 0.0) and all(s == -math.inf for _, s in compiled.nbest()[1:])
