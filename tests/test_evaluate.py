"""evaluate: a process that decodes one test set with several decode configs computes each
utterance's fbank once (`KeptFeatures`), with the same hypotheses, and each config's real-time
factor still counts the fbank."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import paddle
import pytest

from paddle_asr.config import load_config, load_decode_config
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.evaluate import KeptFeatures, decode_manifest
from paddle_asr.families import dygraph_backend
from paddle_asr.models.registry import build_model
from tests.conftest import real_fixture

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup():
    config = load_config(REPO / "recipes/demo/conf/conformer.yaml")
    config = dataclasses.replace(config, vocab_size=40, input_dim=80)
    paddle.seed(0)
    backend = dygraph_backend(build_model(config))
    tokenizer = CharTokenizer(["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(37)] + ["<eos>"])
    full = dataclasses.replace(load_decode_config(REPO / "conf/decode/full.yaml"), batch_size=2,
                               methods=["ctc_greedy_search", "attention_rescoring"])
    chunk = dataclasses.replace(full, decoding_chunk_size=8)
    return backend, tokenizer, config.features, full, chunk


def _manifest(path: Path, names: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, name in enumerate(names):
            f.write(json.dumps({"key": f"u{i}", "wav": str(real_fixture(name)), "duration": 4.0, "text": "一"}) + "\n")
    return path


def test_a_second_decode_config_reads_the_fbank_the_first_computed(setup, tmp_path):
    backend, tokenizer, features, full, chunk = setup
    manifest = _manifest(tmp_path / "data.list", ["aishell-BAC009S0724W0121.wav", "librispeech-1995-1837-0001.wav",
                                                  "aishell-BAC009S0724W0121.wav"])
    alone = {name: decode_manifest(backend, conf, manifest, tokenizer, features) for name, conf in
             (("full", full), ("chunk", chunk))}
    kept = KeptFeatures()
    first = decode_manifest(backend, full, manifest, tokenizer, features, kept=kept)
    assert kept.computed == 3
    second = decode_manifest(backend, chunk, manifest, tokenizer, features, kept=kept)
    assert kept.computed == 3  # nothing computed again
    assert first[0] == alone["full"][0] and second[0] == alone["chunk"][0]
    # The kept fbank's seconds still count: without them the second figure would be the padding's alone.
    assert 0.5 < second[2]["features"] / first[2]["features"] < 2

    other = _manifest(tmp_path / "other.list", ["aishell-BAC009S0724W0121.wav"])
    decode_manifest(backend, full, other, tokenizer, features, kept=kept)
    assert kept.computed == 4  # another set: its own fbank
    other_features = dataclasses.replace(features, high_freq=features.high_freq - 100)
    decode_manifest(backend, full, other, tokenizer, other_features, kept=kept)
    assert kept.computed == 5  # other features of the same set


def test_nothing_is_kept_past_the_byte_budget(setup, tmp_path):
    backend, tokenizer, features, full, chunk = setup
    manifest = _manifest(tmp_path / "data.list", ["aishell-BAC009S0724W0121.wav", "librispeech-1995-1837-0001.wav"])
    kept = KeptFeatures(max_bytes=0)
    for conf in (full, chunk):
        decode_manifest(backend, conf, manifest, tokenizer, features, kept=kept)
    assert kept.computed == 4
