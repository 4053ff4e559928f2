"""Stage 5's sherpa-onnx check: a test set decoded by sherpa-onnx on the ONNX export (its own fbank,
`OfflineRecognizer.from_wenet_ctc` on model.onnx and `OnlineRecognizer.from_wenet_ctc` on
model-streaming.onnx, nothing changed) and by our CTC greedy search on ONNX Runtime (full utterance,
and chunk by chunk with the same chunk size and left chunks), with the error rates side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile

from paddle_asr.artifacts import atomic_write_text
from paddle_asr.errors import AsrError
from paddle_asr.export.onnx import OFFLINE_MODEL, STREAMING_MODEL, TOKENS

# (sherpa-onnx's decoder, ours, mode): the texts compared.
PAIRS = (("sherpa_offline", "ours_full", "offline"), ("sherpa_streaming", "ours_streaming", "streaming"))
# sherpa-onnx's streaming recognizer decodes whole chunks only: silence after each recording lets
# it reach the last words (0.7 s still lost some on the demo test set, docs/onnx.md).
TAIL_SECONDS = 1.0


def _ours(backend, feats: np.ndarray, chunk: int, left: int) -> list[int]:
    from paddle_asr.decode.recognizer import encode_streaming
    from paddle_asr.decode.search import ctc_greedy_search

    if chunk < 0:
        _, lengths, log_probs = backend.encode(feats[None], np.asarray([len(feats)]))
    else:
        log_probs = backend.ctc_activation(encode_streaming(backend, feats, chunk, left))
        lengths = np.asarray([log_probs.shape[1]])
    return ctc_greedy_search(log_probs, lengths)[0]


def _sherpa(rec, samples: np.ndarray, rate: int) -> str:
    stream = rec.create_stream()
    stream.accept_waveform(rate, samples)
    if not hasattr(rec, "is_ready"):
        rec.decode_stream(stream)
        return stream.result.text
    stream.accept_waveform(rate, np.zeros(int(TAIL_SECONDS * rate), np.float32))
    stream.input_finished()
    while rec.is_ready(stream):
        rec.decode_stream(stream)
    return rec.get_result(stream)


def _recognizers(onnx_dir: Path, chunk_size: int, num_left_chunks: int) -> dict:
    import sherpa_onnx

    tokens = str(onnx_dir / TOKENS)
    recs = {"sherpa_offline": sherpa_onnx.OfflineRecognizer.from_wenet_ctc(model=str(onnx_dir / OFFLINE_MODEL),
                                                                           tokens=tokens)}
    if (onnx_dir / STREAMING_MODEL).is_file():
        recs["sherpa_streaming"] = sherpa_onnx.OnlineRecognizer.from_wenet_ctc(
            model=str(onnx_dir / STREAMING_MODEL), tokens=tokens, chunk_size=chunk_size,
            num_left_chunks=num_left_chunks)
    return recs


def sherpa_check(onnx_dir: Path, manifest: Path, *, chunk_size: int = 16, num_left_chunks: int = 4,
                 num_threads: int = 1, out: Path | None = None, log=print) -> dict[str, dict]:
    """{decoder: {"error_rate", "metric", "n", "s", "d", "i"}} for sherpa-onnx and our greedy search
    (ONNX Runtime on `num_threads` threads) on the utterances of `manifest`; written as JSON to `out`
    when given, with each decoder's texts and how far sherpa-onnx's text is from ours (an error rate
    with ours as the reference)."""
    from paddle_asr.export.bundle import read_bundle
    from paddle_asr.export.onnx_backend import OnnxU2Backend
    from paddle_asr.features import compute_fbank

    onnx_dir = Path(onnx_dir)
    if not (onnx_dir / OFFLINE_MODEL).is_file():
        raise AsrError(f"{onnx_dir} has no {OFFLINE_MODEL}: sherpa-onnx runs the ONNX export of a U2 model (stage 4)")
    meta, features, tokenizer = read_bundle(onnx_dir)
    backend = OnnxU2Backend(onnx_dir, meta, num_threads=num_threads)
    recs = _recognizers(onnx_dir, chunk_size, num_left_chunks)
    utts = [json.loads(line) for line in Path(manifest).read_text(encoding="utf-8").splitlines() if line.strip()]
    hyps: dict[str, dict[str, str]] = {"ours_full": {}, "ours_streaming": {}, **{k: {} for k in recs}}
    for u in utts:
        samples, rate = soundfile.read(u["wav"], dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
        if rate != features.sample_rate:
            raise AsrError(f"{u['wav']}: {rate} Hz, the model takes {features.sample_rate} Hz")
        feats = compute_fbank(samples * 32768, features)
        hyps["ours_full"][u["key"]] = tokenizer.decode(_ours(backend, feats, -1, -1))
        if backend.supports_streaming:
            hyps["ours_streaming"][u["key"]] = tokenizer.decode(_ours(backend, feats, chunk_size, num_left_chunks))
        for name, rec in recs.items():
            hyps[name][u["key"]] = _sherpa(rec, samples, rate)
    refs = {u["key"]: u["text"] for u in utts}
    hyps = {name: h for name, h in hyps.items() if h}
    results = {name: _rate(refs, h) for name, h in hyps.items()}
    # sherpa-onnx's text scored against ours: files that decode wrongly show here even where both
    # error rates are high (a model that barely reads), and where the CERs differ little.
    disagreement = {mode: _rate(hyps[ours], hyps[theirs])["error_rate"] for theirs, ours, mode in PAIRS
                    if theirs in hyps and ours in hyps}
    _log(results, disagreement, len(utts), chunk_size, num_left_chunks, log)
    if out is not None:
        atomic_write_text(Path(out), json.dumps({"utterances": len(utts), "chunk_size": chunk_size,
                                                 "num_left_chunks": num_left_chunks, "results": results,
                                                 "disagreement": disagreement, "texts": hyps},
                                                ensure_ascii=False, indent=1))
    return results


def _rate(refs: dict[str, str], hyps: dict[str, str]) -> dict:
    from paddle_asr.metrics.score import score

    report = score(refs, hyps, char=True, verbose=0)
    o = report.overall
    return {"error_rate": round(100 * o.errors / max(o.n, 1), 2), "metric": report.metric,
            "n": o.n, "s": o.s, "d": o.d, "i": o.i}


def _log(results: dict, disagreement: dict, count: int, chunk_size: int, num_left_chunks: int, log) -> None:
    for theirs, ours, mode in PAIRS:
        if theirs in results and ours in results:
            a, b = results[theirs], results[ours]
            what = "offline" if mode == "offline" else f"streaming, chunk {chunk_size}, {num_left_chunks} left chunks"
            log(f"{what}: sherpa-onnx {a['metric']} {a['error_rate']:.2f} % against our CTC greedy search's "
                f"{b['error_rate']:.2f} % ({a['error_rate'] - b['error_rate']:+.2f} points, {count} utterances); "
                f"its text differs from ours by {disagreement[mode]:.2f} % of our characters")
