"""--context_list and --context_score on every command that decodes: `test` (stage 3), `test-export`
(stages 5/6), `transcribe` and `serve`. Each run on the real AISHELL fixture recording must bring a
phrase of the plain decode's runner-up into the result; small models with random weights (an
exported streaming U2, the PaddleSpeech fixture imported as an experiment)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from paddle_asr.artifacts import mark_complete
from paddle_asr.cli import main as cli_main
from paddle_asr.config import DecodeConfig
from paddle_asr.data.audio import read_audio_resampled
from paddle_asr.data.audio_inputs import AudioInput
from paddle_asr.data.tokenizer import load_tokenizer
from paddle_asr.decode.recognizer import Recognizer
from paddle_asr.decode.search import ctc_prefix_beam_search
from paddle_asr.families import dygraph_backend
from paddle_asr.features import compute_fbank
from paddle_asr.import_paddlespeech import import_paddlespeech
from paddle_asr.serve.paddlespeech_client import ServerProcess, http_transcribe, stream_files
from paddle_asr.stages import exp_config, load_dygraph
from paddle_asr.transcribe import TranscribeOptions, Transcriber
from tests.conftest import REPO, real_fixture
from tests.test_hotwords import an_alternative_phrase
from tests.test_serve import FRAME, NO_ENDPOINT, export_u2, transcribe

CHUNK, LEFT = ["--chunk_size", "8"], ["--num_left_chunks", "2"]
SCORE = "4"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = export_u2(tmp_path_factory.mktemp("u2") / "fp32")
    mark_complete(out, "test")  # as stage 4 leaves it: test-export reads the record
    return out


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    """The fixture recording zero-padded to whole 85 ms client frames, so that a stream and
    `transcribe` read the same samples."""
    samples, rate = sf.read(real_fixture("aishell-BAC009S0724W0121.wav"), dtype="int16")
    out = tmp_path_factory.mktemp("wav") / "utt1.wav"
    sf.write(out, np.concatenate([samples, np.zeros(-len(samples) % FRAME, np.int16)]), rate, subtype="PCM_16")
    return out


def phrase_file(recognizer: Recognizer, feats: np.ndarray, units: list[str], path: Path) -> str:
    """Write a one-phrase context list: two units of the runner-up of `recognizer`'s plain n-best
    that its plain decode does not hold."""
    hyps, ctc_lp, enc_lengths = recognizer.recognize_with_ctc(feats[None], np.array([len(feats)], np.int64))
    (plain,) = hyps[recognizer.conf.methods[0]]
    nbest = ctc_prefix_beam_search(ctc_lp[0, : enc_lengths[0]], 10)
    phrase = "".join(units[i] for i in an_alternative_phrase(nbest, also_avoid=plain))
    path.write_text(f"{phrase}\n", encoding="utf-8")
    return phrase


def bundle_phrase(bundle: Path, wav: Path, path: Path, chunk_size: int = -1, left: int = -1) -> tuple[str, str]:
    """`phrase_file` for the bundle's plain transcribe (attention rescoring) of `wav`; (phrase, plain text)."""
    t = Transcriber(bundle, TranscribeOptions(chunk_size=chunk_size, num_left_chunks=left))
    feats = compute_fbank(read_audio_resampled(wav, t.rate), t.features)
    phrase = phrase_file(t.recognizer, feats, t.tokenizer.units, path)
    (plain,) = t.transcribe([AudioInput("utt1", wav)])
    assert phrase not in plain.text
    return phrase, plain.text


def test_transcribe_takes_a_context_list(bundle, wav, tmp_path, capsys):
    phrase, _ = bundle_phrase(bundle, wav, tmp_path / "hotwords.txt")
    biased = transcribe(bundle, [wav], "--context_list", str(tmp_path / "hotwords.txt"), "--context_score", SCORE)
    assert phrase in biased["utt1"]
    (tmp_path / "bad.txt").write_text(f"{phrase}\nno such units\n", encoding="utf-8")
    assert cli_main(["transcribe", "--bundle", str(bundle), str(wav), "--context_list", str(tmp_path / "bad.txt")]) == 1
    assert "bad.txt:2: the phrase 'no such units' has the unit 'n'" in capsys.readouterr().err


def test_test_export_takes_a_context_list_and_keeps_its_results_apart(bundle, wav, tmp_path):
    phrase, _ = bundle_phrase(bundle, wav, tmp_path / "hotwords.txt")
    manifest = tmp_path / "data.list"
    manifest.write_text(json.dumps({"key": "utt1", "wav": str(wav), "duration": 4.3, "text": phrase}) + "\n")
    (tmp_path / "decode.yaml").write_text("methods: [ctc_prefix_beam_search, attention_rescoring]\n")
    args = ["test-export", "--bundle", str(bundle), "--data", str(manifest), "--decode_config",
            str(tmp_path / "decode.yaml"), "--out_prefix", str(tmp_path / "exp/test")]
    assert cli_main(args) == 0
    assert cli_main([*args, "--context_list", str(tmp_path / "hotwords.txt"), "--context_score", SCORE]) == 0
    for method in ("ctc_prefix_beam_search", "attention_rescoring"):
        plain = (tmp_path / f"exp/test_{method}/text").read_text(encoding="utf-8")
        biased = (tmp_path / f"exp/test_hotwords_{method}/text").read_text(encoding="utf-8")
        assert phrase not in plain and phrase in biased, method
        decoding = json.loads((tmp_path / f"exp/test_hotwords_{method}/result.json").read_text())["decoding"]
        assert decoding["context_list"] == str(tmp_path / "hotwords.txt") and decoding["context_score"] == 4.0


def test_stage_3_takes_a_context_list(tmp_path):
    exp = import_paddlespeech(REPO / "tests/fixtures/paddlespeech/conformer", tmp_path / "exp", log=lambda *_: None)
    config, model = load_dygraph(exp, exp / "checkpoints/avg_1.pdparams")
    units = load_tokenizer(Path(exp_config(exp).data.vocab)).units
    wav = real_fixture("aishell-BAC009S0724W0121.wav")
    feats = compute_fbank(read_audio_resampled(wav, 16000), config.features)
    recognizer = Recognizer(dygraph_backend(model), DecodeConfig(methods=["ctc_prefix_beam_search"]), units)
    phrase = phrase_file(recognizer, feats, units, tmp_path / "hotwords.txt")
    manifest = tmp_path / "data.list"
    manifest.write_text(json.dumps({"key": "utt1", "wav": str(wav), "duration": 4.28, "text": phrase}) + "\n")
    (tmp_path / "decode.yaml").write_text("methods: [ctc_prefix_beam_search]\n")
    args = ["test", "--exp_dir", str(exp), "--data", str(manifest), "--decode_config", str(tmp_path / "decode.yaml")]
    assert cli_main([*args, "--context_list", str(tmp_path / "hotwords.txt"), "--context_score", SCORE]) == 0
    assert phrase in (exp / "test_hotwords_ctc_prefix_beam_search/text").read_text(encoding="utf-8")
    assert not (exp / "test_ctc_prefix_beam_search").exists()


def test_serve_streams_with_a_context_list(bundle, wav, tmp_path):
    phrase, _ = bundle_phrase(bundle, wav, tmp_path / "streaming.txt", chunk_size=8, left=2)
    full_phrase, _ = bundle_phrase(bundle, wav, tmp_path / "full.txt")  # for offline requests
    (tmp_path / "hotwords.txt").write_text(f"{phrase}\n{full_phrase}\n", encoding="utf-8")
    options = TranscribeOptions(chunk_size=8, num_left_chunks=2, context_list=str(tmp_path / "hotwords.txt"),
                                context_score=float(SCORE))
    (expected,) = Transcriber(bundle, options).transcribe([AudioInput("utt1", wav)])
    assert phrase in expected.text
    args = [*CHUNK, *LEFT, "--max_batch", "1", "--threads", "1", *NO_ENDPOINT,
            "--context_list", str(tmp_path / "hotwords.txt"), "--context_score", SCORE]
    (offline,) = Transcriber(bundle, dataclasses.replace(options, chunk_size=-1, num_left_chunks=-1)).transcribe(
        [AudioInput("utt1", wav)])
    with ServerProcess(bundle, args=args, log_path=tmp_path / "serve.log") as server:
        (result,) = stream_files(server.host, server.port, [str(wav)])
        reply = http_transcribe(server.host, server.port, str(wav))
    assert result.text == expected.text
    assert full_phrase in offline.text and reply["result"]["transcription"] == offline.text
    assert f"hotwords {tmp_path / 'hotwords.txt'} (score 4.0)" in (tmp_path / "serve.log").read_text()
