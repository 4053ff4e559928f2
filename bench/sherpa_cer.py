"""sherpa-onnx on our ONNX export against our own CTC greedy search, on a test set: the CER of
`OfflineRecognizer.from_wenet_ctc` (model.onnx) and `OnlineRecognizer.from_wenet_ctc`
(model-streaming.onnx), unmodified, and of our `ctc_greedy_search` on ONNX Runtime, full utterance and
chunk by chunk (same chunk size and left chunks).
    python bench/sherpa_cer.py --onnx exp/<name>/export/onnx --data data/test/data.list
Prints one JSON line per decoder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ours(backend, feats: np.ndarray, chunk: int, left: int) -> list[int]:
    from paddle_asr.decode.recognizer import encode_streaming
    from paddle_asr.decode.search import ctc_greedy_search

    if chunk < 0:
        _, lengths, log_probs = backend.encode(feats[None], np.asarray([len(feats)]))
    else:
        log_probs = backend.ctc_activation(encode_streaming(backend, feats, chunk, left))
        lengths = np.asarray([log_probs.shape[1]])
    return ctc_greedy_search(log_probs, lengths)[0]


def sherpa(rec, samples: np.ndarray, rate: int, tail: float) -> str:
    stream = rec.create_stream()
    stream.accept_waveform(rate, samples)
    if hasattr(rec, "is_ready"):  # streaming: whole chunks only, hence the tail of silence
        stream.accept_waveform(rate, np.zeros(int(tail * rate), np.float32))
        stream.input_finished()
        while rec.is_ready(stream):
            rec.decode_stream(stream)
        return rec.get_result(stream)
    rec.decode_stream(stream)
    return stream.result.text


def main() -> None:
    import sherpa_onnx

    from paddle_asr.export.bundle import read_bundle
    from paddle_asr.export.onnx_backend import OnnxU2Backend
    from paddle_asr.features import compute_fbank
    from paddle_asr.metrics.score import score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True, help="an ONNX export directory (stage 4's export/onnx)")
    ap.add_argument("--data", required=True, help="a data.list manifest")
    ap.add_argument("--chunk_size", type=int, default=16)
    ap.add_argument("--num_left_chunks", type=int, default=4)
    ap.add_argument("--tail", type=float, default=1.0, help="seconds of silence after each streamed recording")
    args = ap.parse_args()
    onnx_dir = Path(args.onnx)
    meta, features, tokenizer = read_bundle(onnx_dir)
    backend = OnnxU2Backend(onnx_dir, meta)
    tokens = str(onnx_dir / "tokens.txt")
    recognizers = {
        "sherpa_offline": sherpa_onnx.OfflineRecognizer.from_wenet_ctc(model=str(onnx_dir / "model.onnx"),
                                                                       tokens=tokens),
        "sherpa_streaming": sherpa_onnx.OnlineRecognizer.from_wenet_ctc(
            model=str(onnx_dir / "model-streaming.onnx"), tokens=tokens, chunk_size=args.chunk_size,
            num_left_chunks=args.num_left_chunks),
    }
    utts = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines()]
    hyps: dict[str, dict[str, str]] = {k: {} for k in ("ours_full", "ours_streaming", *recognizers)}
    start = time.perf_counter()
    for u in utts:
        samples, rate = soundfile.read(u["wav"], dtype="float32")
        feats = compute_fbank(samples * 32768, features)
        hyps["ours_full"][u["key"]] = tokenizer.decode(ours(backend, feats, -1, -1))
        hyps["ours_streaming"][u["key"]] = tokenizer.decode(ours(backend, feats, args.chunk_size,
                                                                 args.num_left_chunks))
        for name, rec in recognizers.items():
            hyps[name][u["key"]] = sherpa(rec, samples, rate, args.tail)
    refs = {u["key"]: u["text"] for u in utts}
    for name, h in hyps.items():
        o = score(refs, h).overall
        print(json.dumps({"decoder": name, "cer": round(100 * o.errors / o.n, 2), "n": o.n, "s": o.s, "d": o.d,
                          "i": o.i, "utterances": len(utts), "seconds": round(time.perf_counter() - start, 1)}),
              flush=True)


if __name__ == "__main__":
    main()
