"""The streaming engine of `paddle-asr serve` without the web layer (serve/engine.py, serve/worker.py):
incremental fbank and prefix search equal their whole-utterance versions, a stream's final result
equals `transcribe --chunk_size N` of the same audio, batched interleaved streams equal streams run
alone, and endpointing keeps a long stream's memory bounded. Small exported bundles with random
weights (U2 streaming, DeepSpeech2 online and offline) on the real fixture recordings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile

from paddle_asr.config import FeatureConfig
from paddle_asr.data.audio_inputs import AudioInput
from paddle_asr.decode.search import CtcPrefixBeam, ctc_prefix_beam_search
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import write_bundle_files
from paddle_asr.export.export import export_model
from paddle_asr.features import compute_fbank
from paddle_asr.serve.engine import (
    ChunkCutter,
    EndpointRules,
    IncrementalFbank,
    StreamingModel,
    StreamOptions,
    Window,
    run_ready,
    stream_pcm,
)
from paddle_asr.serve.worker import InferenceWorker
from paddle_asr.transcribe import TranscribeOptions, Transcriber
from tests.conftest import real_fixture
from tests.test_export_deepspeech2 import build_small_ds2
from tests.test_export_deepspeech2 import write_vocab as write_ds2_vocab
from tests.test_export_quant import FEAT_DIM, build_small_u2

WAVS = [real_fixture("aishell-BAC009S0724W0121.wav"), real_fixture("librispeech-1995-1837-0001.wav")]
NO_ENDPOINT = EndpointRules(silence_without_text=0, silence_after_text=0, max_segment=0)
FRAME = 1360  # 85 ms at 16 kHz, PaddleSpeech's client frame


def pcm_of(path: Path) -> np.ndarray:
    samples, rate = soundfile.read(str(path), dtype="int16")
    assert rate == 16000
    return samples


def pieces(samples: np.ndarray, size: int = FRAME) -> list[bytes]:
    data = samples.astype("<i2").tobytes()
    return [data[i: i + 2 * size] for i in range(0, len(data), 2 * size)]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    return make_bundles(tmp_path_factory)


def make_bundles(tmp_path_factory) -> dict[str, Path]:
    """Small exported bundles with random weights: U2 streaming, DeepSpeech2 online and offline."""
    out = {}
    config, model = build_small_u2()
    out["u2"] = tmp_path_factory.mktemp("u2") / "fp32"
    diffs = export_model(model, FEAT_DIM, out["u2"])
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("".join(f"{u}\n" for u in ["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(57)] + ["<eos>"]))
    write_bundle_files(out["u2"], config, vocab, model, checkpoint="test", functions=sorted(diffs))
    ds2_vocab = write_ds2_vocab(tmp_path_factory.mktemp("ds2vocab") / "vocab.txt")
    for name, direction in (("ds2_online", "forward"), ("ds2_offline", "bidirect")):
        config, model = build_small_ds2(direction, False)
        out[name] = tmp_path_factory.mktemp(name) / "fp32"
        diffs = export_model(model, config.input_dim, out[name])
        write_bundle_files(out[name], config, ds2_vocab, model, checkpoint="test", functions=sorted(diffs))
    return out


def streaming_model(bundle: Path, chunk: int = 16, left: int = -1, rules: EndpointRules = NO_ENDPOINT):
    return StreamingModel(Transcriber(bundle), StreamOptions(chunk, left, rules))


def transcribe_file(bundle: Path, wav: Path, chunk: int, left: int = -1) -> tuple[str, list]:
    t = Transcriber(bundle, TranscribeOptions(chunk_size=chunk, num_left_chunks=left))
    (result,) = t.transcribe([AudioInput("utt", wav)])
    assert not result.error, result.error
    return result.text, [(x["token"], x["start"], x["end"]) for s in result.segments for x in s.tokens]


def times_of(final: dict) -> list:
    return [(t["w"], t["bg"], t["ed"]) for t in final["times"]]


@pytest.mark.parametrize("bins", [80, 161])  # 161: the NumPy fbank kaldi-native-fbank refuses
def test_incremental_fbank_is_compute_fbank_of_the_whole_audio(bins):
    config = FeatureConfig(num_mel_bins=bins)
    samples = pcm_of(WAVS[0]).astype(np.float32)
    rng = np.random.default_rng(0)
    fbank, frames, pos = IncrementalFbank(config), [], 0
    while pos < len(samples):  # pieces of 1 sample to 0.3 s, as clients send them
        n = int(rng.integers(1, 4800))
        frames.append(fbank.accept(samples[pos: pos + n]))
        pos += n
    whole = compute_fbank(samples, config)
    assert np.array_equal(np.concatenate(frames), whole)


def test_incremental_prefix_search_is_the_whole_search():
    rng = np.random.default_rng(0)
    for trial in range(5):
        logits = rng.normal(0, 3, (120, 12)).astype(np.float32)
        logits[:, 0] += 2  # blank-heavy, as CTC is
        if trial == 4:
            logits[::3] = 0.0  # exact ties inside the top-k
        lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        beam, pos = CtcPrefixBeam(5), 0
        while pos < len(lp):
            n = int(rng.integers(0, 20))
            beam.advance(lp[pos: pos + n])
            pos += n
        assert beam.nbest() == ctc_prefix_beam_search(lp, 5)
        assert beam.best() == ctc_prefix_beam_search(lp, 5)[0][0]


@pytest.mark.parametrize("chunk,left", [(16, -1), (4, 2), (8, 1)])
def test_final_equals_transcribe_with_the_same_chunks(bundles, chunk, left):
    model = streaming_model(bundles["u2"], chunk, left)
    for wav in WAVS:
        text, times = transcribe_file(bundles["u2"], wav, chunk, left)
        final = stream_pcm(model, pieces(pcm_of(wav)))
        assert text and final["result"] == text
        assert times_of(final) == times


def test_deepspeech2_final_equals_transcribe(bundles):
    model = streaming_model(bundles["ds2_online"], 8)
    assert not model.rescore  # CTC only: the best prefix is the result
    text, times = transcribe_file(bundles["ds2_online"], WAVS[0], 8)
    final = stream_pcm(model, pieces(pcm_of(WAVS[0]), 777))
    assert final["result"] == text and times_of(final) == times


def test_a_bundle_that_cannot_stream_is_refused_with_the_reason(bundles):
    model = streaming_model(bundles["ds2_offline"])
    assert model.refusal.startswith("this bundle cannot stream")
    with pytest.raises(AsrError, match="cannot stream"):
        model.new_session()


def test_partials_are_prefixes_of_later_results(bundles):
    model = streaming_model(bundles["u2"])
    cutter, session = ChunkCutter(model), model.new_session()
    partials = []
    for piece in pieces(pcm_of(WAVS[0])):
        session.pending.extend(cutter.accept_pcm(piece))
        run_ready(model, [session], 1)
        partials.append(session.partial_text)
    assert partials[-1] and len(set(partials)) > 3
    # CTC prefix search can revise its last units; each partial shares most of the next one.
    for a, b in zip(partials, partials[1:]):
        common = len(next((a[:i] for i in range(len(a), -1, -1) if b.startswith(a[:i])), ""))
        assert len(a) - common <= 3, (a, b)


def test_interleaved_batched_streams_equal_streams_alone(bundles):
    """8 streams of different audio and frame sizes through the worker (batched encoder calls)
    give exactly the results of each stream run alone."""
    model = streaming_model(bundles["u2"], 8)
    audio = [pcm_of(WAVS[i % 2])[i * 3001: len(pcm_of(WAVS[i % 2])) - i * 2000] for i in range(8)]
    sizes = [FRAME, 800, 2000, FRAME, 333, 4000, FRAME, 1601]
    alone = [stream_pcm(model, pieces(a, n)) for a, n in zip(audio, sizes)]
    worker = InferenceWorker(model, max_batch=8, queue_size=16)
    worker.start()
    try:
        streams = [worker.open_stream() for _ in audio]
        queues = [pieces(a, n) for a, n in zip(audio, sizes)]
        while any(queues):
            futures = [worker.audio(s, q.pop(0)) for s, q in zip(streams, queues) if q]
            for f in futures:
                assert isinstance(f.result(timeout=60), str)
        finals = [f.result(timeout=60) for f in [worker.end(s) for s in streams]]
    finally:
        worker.stop()
    assert finals == alone
    assert worker.batched_windows > worker.ticks  # some encoder calls carried several streams


def test_worker_survives_bad_audio_and_dropped_streams(bundles):
    model = streaming_model(bundles["u2"])
    worker = InferenceWorker(model, max_batch=4, queue_size=4)
    worker.start()
    try:
        dropped = worker.open_stream()
        worker.audio(dropped, pieces(pcm_of(WAVS[0]))[0]).result(timeout=60)
        worker.drop(dropped)
        stream = worker.open_stream()
        with pytest.raises(AsrError, match="not whole 16-bit samples"):
            worker.audio(stream, b"\0" * 101)
        for piece in pieces(pcm_of(WAVS[0])):
            worker.audio(stream, piece).result(timeout=60)
        final = worker.end(stream).result(timeout=60)
        offline = worker.call(lambda: 6 * 7).result(timeout=60)
    finally:
        worker.stop()
    assert final == stream_pcm(model, pieces(pcm_of(WAVS[0]))) and offline == 42
    assert not worker._streams  # the dropped and the finished stream are both gone


@pytest.mark.parametrize("family", ["u2", "ds2_online"])
def test_warmed_up_worker_gives_the_results_of_a_stream_alone(bundles, family):
    """The worker runs every batch size once before serving (fresh states, zero windows); the
    streams after it are untouched by that, in both model families."""
    model = streaming_model(bundles[family], 8, 2 if family == "u2" else -1)
    worker = InferenceWorker(model, max_batch=5, queue_size=8)
    worker.start()
    try:
        streams = [worker.open_stream() for _ in WAVS]
        queues = [pieces(pcm_of(w)) for w in WAVS]
        while any(queues):
            for f in [worker.audio(s, q.pop(0)) for s, q in zip(streams, queues) if q]:
                f.result(timeout=60)
        finals = [f.result(timeout=60) for f in [worker.end(s) for s in streams]]
    finally:
        worker.stop()
    assert finals == [stream_pcm(model, pieces(pcm_of(w))) for w in WAVS]


def test_endpoints_split_a_long_stream_with_bounded_memory(bundles):
    """Two minutes of speech and silence: segments end at the rules, each segment's times are offset
    to the stream, and what a session holds never grows with the stream's length."""
    speech = pcm_of(WAVS[0])
    gap = np.zeros(16000 * 3, np.int16)
    audio = np.concatenate([np.concatenate([speech, gap])] * 17)  # ~124 s
    rules = EndpointRules(silence_after_text=1.0, silence_without_text=2.0, max_segment=6.0)
    model = streaming_model(bundles["u2"], 16, 2, rules)
    cutter, session = ChunkCutter(model), model.new_session()
    most_enc = most_feats = 0
    for piece in pieces(audio):
        session.pending.extend(cutter.accept_pcm(piece))
        run_ready(model, [session], 1)
        most_enc = max(most_enc, sum(e.shape[1] for e in session.enc))
        most_feats = max(most_feats, len(cutter._feats))
    session.pending.extend(cutter.finish())
    session.finishing, session.end_s = True, cutter.samples / model.rate
    run_ready(model, [session], 1)
    final = session.final()
    assert len(session.segments) >= 17  # at least one segment per utterance
    assert most_enc * model.frame_seconds <= rules.max_segment + 16 * model.frame_seconds
    assert most_feats <= model.window + FRAME // model.hop + 1
    starts = [t[1] for t in times_of(final)]
    assert starts == sorted(starts) and starts[-1] > 100.0


def test_endpoint_rules_count_trailing_blank_frames(bundles):
    """WeNet's rules on CTC posteriors: 1 s of trailing blank ends a segment after text, 5 s one
    without text (a random-weight model never outputs blank, so the posteriors are made here)."""
    model = streaming_model(bundles["u2"], 4, -1, EndpointRules())
    frames_per_s = round(1 / model.frame_seconds)
    vocab = model.tokenizer.vocab_size

    def chunk(token: int, n: int) -> np.ndarray:
        lp = np.full((n, vocab), np.log(0.01 / (vocab - 1)), np.float32)
        lp[:, token] = np.log(0.99)
        return lp

    def frames_until_endpoint(session, token: int, limit: int) -> int:
        for i in range(limit):
            session.pending.append(Window(i * model.stride, np.zeros((model.window, 80), np.float32)))
            session.accept_chunk(np.zeros((1, 1, 4), np.float32), chunk(token, 1), session.state)
            if session.endpoint_reached():
                return i + 1
        return -1

    silent = model.new_session()
    assert frames_until_endpoint(silent, 0, 10 * frames_per_s) == 5 * frames_per_s
    spoken = model.new_session()
    assert frames_until_endpoint(spoken, 7, frames_per_s) == -1  # speech goes on: no endpoint
    assert spoken.partial_text
    assert frames_until_endpoint(spoken, 0, 10 * frames_per_s) == frames_per_s
    assert EndpointRules().reached(20.0, 0.0, True) and EndpointRules().reached(20.0, 0.0, False)


def test_options_are_checked():
    with pytest.raises(AsrError, match="chunk_size"):
        StreamOptions(chunk_size=0).check()
    with pytest.raises(AsrError, match="blank threshold"):
        dataclasses.replace(StreamOptions(), endpoint=EndpointRules(blank_threshold=1.5)).check()
