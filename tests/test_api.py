"""The Python API as a user calls it (`paddle_asr.load`): files and arrays at any rate, typed results,
streams, and the same results as `paddle-asr transcribe` and the server's engine. Small exported
bundles with random weights (tests.test_serve_engine) on the real fixture recordings."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import paddle_asr
from paddle_asr.api import Result, Token
from paddle_asr.data.audio import resample
from paddle_asr.errors import AsrError
from paddle_asr.serve.engine import StreamOptions, stream_pcm
from tests.test_serve_engine import WAVS, make_bundles, pcm_of, pieces

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return make_bundles(tmp_path_factory)


def cli_transcribe(bundle, wav, *options: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "transcribe", "--bundle", str(bundle), "--format",
                          "json", *options, str(wav)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_transcribe_a_file_is_the_command_line_result(bundles):
    asr = paddle_asr.load(bundles["u2"])
    result = asr.transcribe(WAVS[0])
    assert isinstance(result, Result) and result.text and all(isinstance(t, Token) for t in result.tokens)
    assert result.to_json() == cli_transcribe(bundles["u2"], WAVS[0])
    starts = [t.start for t in result.tokens]
    assert starts == sorted(starts) and all(t.start <= t.end <= result.duration for t in result.tokens)
    assert "".join(t.text for t in result.tokens) == result.text
    assert (asr.sample_rate, asr.precision, asr.runtime) == (16000, "fp32", "paddle")


def test_arrays_in_any_form_give_the_file_result(bundles, tmp_path):
    asr = paddle_asr.load(bundles["u2"])
    expected = asr.transcribe(WAVS[0]).text
    floats, rate = soundfile.read(str(WAVS[0]), dtype="float32")
    assert asr.transcribe(floats, sample_rate=rate).text == expected
    assert asr.transcribe(pcm_of(WAVS[0]), sample_rate=rate).text == expected  # int16
    assert asr.transcribe(np.stack([floats, floats], axis=1), sample_rate=rate).text == expected  # stereo
    at_8k = np.round(resample(pcm_of(WAVS[0]).astype(np.float32), 16000, 8000)).astype(np.int16)
    soundfile.write(str(tmp_path / "8k.wav"), at_8k, 8000, subtype="PCM_16")
    from_file = asr.transcribe(tmp_path / "8k.wav")
    from_array = asr.transcribe(at_8k, sample_rate=8000)
    assert from_file.text and from_array == dataclasses.replace(from_file, key="audio", path="audio")


def test_a_stream_gives_transcribe_at_its_chunk_size_and_the_servers_final(bundles):
    asr = paddle_asr.load(bundles["u2"])
    stream = asr.stream(chunk_size=16, num_left_chunks=8)
    partials = [stream.feed(p) for p in pieces(pcm_of(WAVS[0]))]
    final = stream.finish()
    offline = paddle_asr.load(bundles["u2"], chunk_size=16, num_left_chunks=8).transcribe(WAVS[0])
    assert final.text == offline.text and final.tokens == offline.tokens
    server = stream_pcm(asr.streaming_model(StreamOptions(16, 8)), pieces(pcm_of(WAVS[0])))
    assert server["result"] == final.text
    assert partials[-1] and final.text.startswith(partials[-1][:1])
    with pytest.raises(AsrError, match="finished"):
        stream.feed(b"\0\0")


def test_a_stream_takes_float_samples_and_pieces_of_any_length(bundles):
    asr = paddle_asr.load(bundles["u2"])
    floats, _ = soundfile.read(str(WAVS[1]), dtype="float32")
    stream = asr.stream(chunk_size=8, num_left_chunks=-1)
    rng, pos = np.random.default_rng(0), 0
    while pos < len(floats):
        n = int(rng.integers(1, 6000))
        stream.feed(floats[pos: pos + n])
        pos += n
    expected = paddle_asr.load(bundles["u2"], chunk_size=8).transcribe(WAVS[1])
    assert stream.finish().text == expected.text


def test_bad_calls_get_reasons(bundles):
    asr = paddle_asr.load(bundles["u2"])
    with pytest.raises(AsrError, match="sample_rate"):
        asr.transcribe(pcm_of(WAVS[0]))
    with pytest.raises(AsrError, match="16-bit"):
        asr.stream().feed(b"\0\0\0")
    with pytest.raises(AsrError, match="does not exist|cannot read|no such"):
        asr.transcribe(WAVS[0].parent / "missing.wav")
    with pytest.raises(AsrError, match="cannot stream: its RNNs read the audio in both directions"):
        paddle_asr.load(bundles["ds2_offline"]).stream()


def test_the_readme_example_runs_as_printed(bundles):
    """README.md's Python API section, run as printed on a bundle and the fixture recording."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    code = code.replace('"recipes/demo/exp/conformer/export/int8"', repr(str(bundles["u2"]))).replace(
        '"test.wav"', repr(str(WAVS[0])))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected = paddle_asr.load(bundles["u2"], chunk_size=16, num_left_chunks=8).transcribe(WAVS[0]).text
    assert lines[0].startswith(paddle_asr.load(bundles["u2"]).transcribe(WAVS[0]).text + " [(")
    assert len([x for x in lines if x.startswith("partial:")]) == -(-len(pcm_of(WAVS[0])) // 1360)
    assert lines[-1] == f"final: {expected}"


def test_align_is_the_command_lines_alignment(bundles, tmp_path):
    """`asr.align(audio, text)`: the given text's words and tokens with times, as `paddle-asr align`."""
    asr = paddle_asr.load(bundles["u2"])
    text = "".join(chr(0x4E00 + i) for i in (3, 17, 5, 40, 22, 9))
    result = asr.align(WAVS[0], text)
    (tmp_path / "wav.scp").write_text(f"utt {WAVS[0]}\n")
    (tmp_path / "text").write_text(f"utt {text}\n")
    out = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "align", "--model", str(bundles["u2"]), "--text",
                          str(tmp_path / "text"), "--format", "json", str(tmp_path / "wav.scp")],
                         capture_output=True, text=True, check=True)
    cli = json.loads(out.stdout.splitlines()[-1])
    assert [(t.text, t.start, t.end, t.conf) for t in result.tokens] == [
        (t["token"], t["start"], t["end"], t["conf"]) for t in cli["tokens"]]
    assert "".join(t.text for t in result.tokens) == text and len(result.words) == len(text)
    with pytest.raises(AsrError, match="outside|vocabulary"):
        asr.align(WAVS[0], "not in the units")


def test_hotwords_reach_transcribe_and_streams(tmp_path):
    """load(context_list=...): the list's phrase enters both the transcript and a stream's final
    result, as with `paddle-asr transcribe --context_list`."""
    from tests.test_hotwords_cli import SCORE, bundle_phrase
    from tests.test_serve import export_u2

    bundle = export_u2(tmp_path / "fp32")
    phrase, plain = bundle_phrase(bundle, WAVS[0], tmp_path / "hotwords.txt")
    asr = paddle_asr.load(bundle, context_list=tmp_path / "hotwords.txt", context_score=float(SCORE))
    assert phrase in asr.transcribe(WAVS[0]).text and phrase not in paddle_asr.load(bundle).transcribe(WAVS[0]).text
    stream = asr.stream(chunk_size=8, num_left_chunks=-1)
    stream.feed(pcm_of(WAVS[0]))
    chunked = paddle_asr.load(bundle, chunk_size=8, context_list=tmp_path / "hotwords.txt", context_score=float(SCORE))
    assert stream.finish().text == chunked.transcribe(WAVS[0]).text
