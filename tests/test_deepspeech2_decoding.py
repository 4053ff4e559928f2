"""DeepSpeech2 through the recognizer: the CTC methods and LM beam search on PaddleSpeech-weighted
fixture models, streaming with recurrent states, and the methods a CTC-only model must refuse."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from paddle_asr.config import DecodeConfig
from paddle_asr.decode.dygraph_backend import DeepSpeech2DygraphBackend
from paddle_asr.decode.recognizer import Recognizer
from paddle_asr.errors import AsrError
from paddle_asr.families import dygraph_backend
from paddle_asr.lm.arpa import write_arpa
from paddle_asr.lm.kneser_ney import build_kneser_ney
from tests.test_deepspeech2 import golden, model, raw_batch

CTC = ["ctc_greedy_search", "ctc_prefix_beam_search", "ctc_beam_search_lm"]


@pytest.fixture()
def lm_file(tmp_path):
    """A character 3-gram over the fixture model's units (their ids as 'characters')."""
    vocab = [f"u{i}" for i in range(golden("deepspeech2")[0]["vocab_size"])]
    rng = np.random.default_rng(0)
    sentences = [[vocab[j] for j in rng.integers(1, len(vocab), 12)] for _ in range(200)]
    lm, _ = build_kneser_ney(sentences, 3)
    write_arpa(lm, tmp_path / "lm.arpa")
    return tmp_path / "lm.arpa", vocab


def test_a_deepspeech2_model_gets_the_ctc_backend_and_refuses_decoder_methods():
    backend = dygraph_backend(model("deepspeech2"))
    assert isinstance(backend, DeepSpeech2DygraphBackend) and not backend.has_decoder
    with pytest.raises(AsrError, match="attention, attention_rescoring need an attention decoder"):
        Recognizer(backend, DecodeConfig())
    with pytest.raises(AsrError, match="ctc_beam_search_lm needs lm_path"):
        Recognizer(backend, DecodeConfig(methods=CTC))


def test_lm_beam_search_with_zero_weights_is_the_prefix_beam_search(lm_file):
    path, vocab = lm_file
    feats, lengths = raw_batch()
    conf = DecodeConfig(methods=CTC, beam_size=8, lm_path=str(path), alpha=0.0, beta=0.0)
    got = Recognizer(dygraph_backend(model("deepspeech2")), conf, vocab).recognize(feats, lengths)
    assert got["ctc_beam_search_lm"] == got["ctc_prefix_beam_search"]
    assert all(len(h) > 0 for h in got["ctc_greedy_search"])
    # With weight on the LM the search does consult it (a different ranking on these inputs).
    weighted = dataclasses.replace(conf, alpha=2.0, beta=1.0)
    lm_result = Recognizer(dygraph_backend(model("deepspeech2")), weighted, vocab).recognize(feats, lengths)
    assert lm_result["ctc_beam_search_lm"] != got["ctc_prefix_beam_search"]


@pytest.mark.parametrize("name", ["deepspeech2_online", "deepspeech2_online_gru"])
def test_streaming_recognition_equals_full_utterance(name):
    feats, lengths = raw_batch()
    backend = dygraph_backend(model(name))
    full = Recognizer(backend, DecodeConfig(methods=CTC[:2], beam_size=4)).recognize(feats, lengths)
    for chunk in (1, 4, 16):
        streamed = Recognizer(backend, DecodeConfig(methods=CTC[:2], beam_size=4, decoding_chunk_size=chunk))
        assert streamed.recognize(feats, lengths) == full, chunk


def test_the_offline_model_refuses_streaming():
    with pytest.raises(AsrError, match="needs a streaming model"):
        Recognizer(dygraph_backend(model("deepspeech2")), DecodeConfig(methods=CTC[:1], decoding_chunk_size=4))
