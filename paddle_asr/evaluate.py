"""Decode a prepared test set with any model runner, score it and measure the real-time factor.

One function serves stage 3 (dynamic graph), 5 (exported FP32) and 6 (INT8): a runner maps
(features [B, T, D], lengths [B]) to (CTC log-probs [B, T', V], lengths [B]). The real-time factor
counts everything from reading the audio to the text: fbank, network and search.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from paddle_asr.artifacts import atomic_directory, atomic_write_text
from paddle_asr.config import FeatureConfig
from paddle_asr.data.dataset import iterate_batches, make_batches
from paddle_asr.data.manifest import read_kaldi_table, read_manifest
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.decode.search import ctc_greedy_search
from paddle_asr.export.inference import LENGTH_BUCKET
from paddle_asr.features import num_frames
from paddle_asr.metrics.score import score

Runner = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def warm_up(runner: Runner, batches: list, feat_conf: FeatureConfig) -> None:
    """Run each batch shape once on silence before timing.

    oneDNN builds its kernels the first time it meets a shape; that one-off cost (larger for INT8)
    is not what a real-time factor should measure. The timed pass then runs as a server would.
    """
    seen = set()
    for group in batches:
        frames = max(num_frames(int(round(u.duration * feat_conf.sample_rate)), feat_conf) for u in group)
        shape = (len(group), -(-frames // LENGTH_BUCKET))
        if shape in seen:
            continue
        seen.add(shape)
        runner(np.zeros((len(group), frames, feat_conf.num_mel_bins), np.float32), np.full(len(group), frames, np.int64))


def decode_manifest(
    runner: Runner, manifest: Path, tokenizer: CharTokenizer, feat_conf: FeatureConfig, batch_size: int
) -> tuple[dict[str, str], dict[str, str], float, float, float]:
    """Returns (hypotheses, references, seconds spent in all, seconds in the network, seconds of audio)."""
    utts = read_manifest(manifest)
    batches = make_batches(utts, batch_size)
    warm_up(runner, batches, feat_conf)
    hyps: dict[str, str] = {}
    start = time.perf_counter()
    network = 0.0
    for batch in iterate_batches(batches, tokenizer, feat_conf, train=False):
        t = time.perf_counter()
        log_probs, lengths = runner(batch.feats, batch.feat_lengths)
        network += time.perf_counter() - t
        for key, ids in zip(batch.keys, ctc_greedy_search(np.asarray(log_probs), np.asarray(lengths))):
            hyps[key] = tokenizer.decode(ids)
    elapsed = time.perf_counter() - start
    return hyps, {u.key: u.text for u in utts}, elapsed, network, sum(u.duration for u in utts)


def evaluate(
    runner: Runner,
    manifest: Path,
    tokenizer: CharTokenizer,
    feat_conf: FeatureConfig,
    out_dir: Path,
    *,
    label: str,
    batch_size: int = 16,
    extra: dict | None = None,
    log=print,
) -> dict:
    """Write `text` (hypotheses), `wer` (compute-wer report) and `result.json` into `out_dir`."""
    hyps, refs, elapsed, network_s, audio_s = decode_manifest(runner, manifest, tokenizer, feat_conf, batch_size)
    report = score(refs, hyps, char=True, verbose=1)
    o = report.overall
    result = {
        "label": label,
        "cer": round(o.rate, 2),
        "n": o.n, "c": o.c, "s": o.s, "d": o.d, "i": o.i,
        "utterances": len(refs),
        "audio_seconds": round(audio_s, 2),
        "decode_seconds": round(elapsed, 3),
        "network_seconds": round(network_s, 3),
        "rtf": round(elapsed / audio_s, 5) if audio_s else None,
        "network_rtf": round(network_s / audio_s, 5) if audio_s else None,
        **(extra or {}),
    }
    with atomic_directory(Path(out_dir)) as tmp:
        atomic_write_text(tmp / "text", "".join(f"{k} {v}\n" if v else f"{k}\n" for k, v in sorted(hyps.items())))
        atomic_write_text(tmp / "wer", report.text)
        atomic_write_text(tmp / "result.json", json.dumps(result, ensure_ascii=False, indent=1))
    log(f"{label}: CER {o.rate:.2f} % (N={o.n} C={o.c} S={o.s} D={o.d} I={o.i}) on {len(refs)} utterances, "
        f"RTF {result['rtf']:.4f} ({elapsed:.1f} s for {audio_s:.1f} s of audio, network {network_s:.1f} s) -> {out_dir}")
    return result


def read_hypotheses(out_dir: Path) -> dict[str, str]:
    return read_kaldi_table(Path(out_dir) / "text")
