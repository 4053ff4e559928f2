"""Decode a prepared test set with every configured method, score each and measure real-time factors.

One function serves stage 3 (dynamic graph), 5 (exported FP32) and 6 (INT8): all methods share one
encoder pass per batch (`decode.recognizer.Recognizer`), and each method gets its own directory
`<out_prefix>_<method>/` with `text` (hypotheses), `wer` (compute-wer report) and `result.json`.
A method's real-time factor counts reading the audio, fbank, the shared encoder pass and its own
search: what a server decoding with that method alone would spend.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from paddle_asr.artifacts import atomic_directory, atomic_write_text, fingerprint, mark_complete, reuse_or_clear
from paddle_asr.config import DecodeConfig, FeatureConfig
from paddle_asr.data.dataset import collate, load_features, make_batches
from paddle_asr.data.manifest import Utterance, read_kaldi_table, read_manifest
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.decode.context_graph import ContextGraph, context_graph_for
from paddle_asr.decode.recognizer import Backend, Recognizer
from paddle_asr.devices import cpu_description
from paddle_asr.errors import AsrError
from paddle_asr.export.inference import LENGTH_BUCKET
from paddle_asr.features import num_frames
from paddle_asr.metrics.score import score


def result_dir(out_prefix: Path, method: str) -> Path:
    out_prefix = Path(out_prefix)
    return out_prefix.parent / f"{out_prefix.name}_{method}"


def mode_prefix(base: str, conf: DecodeConfig) -> str:
    """`test` for full-utterance decoding, `test_chunk16` for streaming with 16-frame chunks; then
    `_hotwords` when a context list biases the search, so biased results never replace plain ones."""
    prefix = base if conf.decoding_chunk_size < 0 else f"{base}_chunk{conf.decoding_chunk_size}"
    return f"{prefix}_hotwords" if conf.context_list else prefix


def warm_up(backend: Backend, batches: list, feat_conf: FeatureConfig) -> None:
    """Run each batch shape through the encoder once on silence before timing.

    oneDNN builds its kernels the first time it meets a shape; that one-off cost (larger for INT8)
    is not what a real-time factor should measure. The timed pass then runs as a server would.
    """
    seen = set()
    for group in batches:
        frames = max(num_frames(int(round(u.duration * feat_conf.sample_rate)), feat_conf) for u in group)
        shape = (len(group), -(-frames // LENGTH_BUCKET))
        if shape not in seen:
            seen.add(shape)
            backend.encode(np.zeros((len(group), frames, feat_conf.num_mel_bins), np.float32),
                           np.full(len(group), frames, np.int64))


class KeptFeatures:
    """One process's fbank of the test set it decodes, kept for the set's next decode config
    (`stages.test_runs` puts a set's configs one after another), up to `max_bytes` of features.
    Each utterance keeps the seconds its fbank took, so every config's real-time factor still
    counts computing it, as decoding the set with that config alone would."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.computed = 0  # utterances whose fbank was computed rather than kept
        self._source: tuple[str, str] | None = None
        self._kept: dict[str, tuple[np.ndarray, float]] = {}
        self._bytes = 0
        self._feat_conf = FeatureConfig()

    def use(self, manifest: Path, feat_conf: FeatureConfig) -> None:
        """Set the test set and features of the next `load`s; another set, or other features,
        drop what is kept (it is of no use to them)."""
        source = (str(Path(manifest).resolve()), json.dumps(dataclasses.asdict(feat_conf), sort_keys=True))
        if source != self._source:
            self._source, self._kept, self._bytes = source, {}, 0
        self._feat_conf = feat_conf

    def load(self, utt: Utterance) -> tuple[np.ndarray, float]:
        """(fbank [T, D], seconds it took to compute) of one utterance of the set given to `use`."""
        if utt.key in self._kept:
            return self._kept[utt.key]
        t = time.perf_counter()
        feats = load_features(utt, self._feat_conf)
        entry = (feats, time.perf_counter() - t)
        self.computed += 1
        if self._bytes + feats.nbytes <= self.max_bytes:
            self._kept[utt.key] = entry
            self._bytes += feats.nbytes
        return entry


def decode_manifest(
    backend: Backend, conf: DecodeConfig, manifest: Path, tokenizer: CharTokenizer, feat_conf: FeatureConfig,
    context: ContextGraph | None = None, kept: KeptFeatures | None = None,
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, float], float]:
    """Returns ({method: {key: text}}, references, seconds spent per part, seconds of audio);
    `context`: the hotwords graph of conf.context_list (`context_graph_for`); `kept`: the fbank an
    earlier decode config of this set left (none kept without it)."""
    utts = read_manifest(manifest)
    batches = make_batches(utts, conf.batch_size)
    recognizer = Recognizer(backend, conf, tokenizer.units, context)
    if conf.decoding_chunk_size < 0:
        warm_up(backend, batches, feat_conf)
    kept = kept if kept is not None else KeptFeatures(max_bytes=0)
    kept.use(manifest, feat_conf)
    hyps: dict[str, dict[str, str]] = {m: {} for m in conf.methods}
    features = 0.0
    for group in batches:
        loaded = [kept.load(u) for u in group]
        t = time.perf_counter()
        batch = collate([u.key for u in group], [f for f, _ in loaded], [[] for _ in group], [u.text for u in group])
        features += time.perf_counter() - t + sum(seconds for _, seconds in loaded)
        for method, ids in recognizer.recognize(batch.feats, batch.feat_lengths).items():
            for key, seq in zip(batch.keys, ids):
                hyps[method][key] = tokenizer.decode(seq)
    seconds = {"features": features, **recognizer.seconds}
    return hyps, {u.key: u.text for u in utts}, seconds, sum(u.duration for u in utts)


def evaluate(backend: Backend, conf: DecodeConfig, manifest: Path, tokenizer: CharTokenizer, feat_conf: FeatureConfig,
             out_prefix: Path, *, label: str, extra: dict | None = None, context: ContextGraph | None = None,
             kept: KeptFeatures | None = None, log=print) -> list[dict]:
    """Decode, then write one result directory per method; returns their result.json contents."""
    hyps, refs, seconds, audio_s = decode_manifest(backend, conf, Path(manifest), tokenizer, feat_conf, context,
                                                   kept)
    results = []
    for method in conf.methods:
        report = score(refs, hyps[method], char=True, verbose=1)
        o = report.overall
        decode_s = seconds["features"] + seconds["encoder"] + seconds[method]
        result = {
            "label": label,
            "date": datetime.date.today().isoformat(),
            "search": method,
            "metric": report.metric,  # CER (characters) or WER (words): what error_rate counts
            "error_rate": round(o.rate, 2),
            "n": o.n, "c": o.c, "s": o.s, "d": o.d, "i": o.i,
            "utterances": len(refs),
            "audio_seconds": round(audio_s, 2),
            "decode_seconds": round(decode_s, 3),
            "encoder_seconds": round(seconds["encoder"], 3),
            "search_seconds": round(seconds[method], 3),
            "rtf": round(decode_s / audio_s, 5) if audio_s else None,
            "encoder_rtf": round(seconds["encoder"] / audio_s, 5) if audio_s else None,
            "decoding": dataclasses.asdict(conf),
            "cpu": cpu_description(),  # the RTFs' machine
            **(extra or {}),
        }
        out_dir = result_dir(out_prefix, method)
        with atomic_directory(out_dir) as tmp:
            text = "".join(f"{k} {v}\n" if v else f"{k}\n" for k, v in sorted(hyps[method].items()))
            atomic_write_text(tmp / "text", text)
            atomic_write_text(tmp / "wer", report.text)
            atomic_write_text(tmp / "result.json", json.dumps(result, ensure_ascii=False, indent=1))
        log(f"{label} {method}: {result['metric']} {o.rate:.2f} % (N={o.n} S={o.s} D={o.d} I={o.i}), "
            f"RTF {result['rtf']:.4f} (encoder {seconds['encoder']:.1f} s + search {seconds[method]:.1f} s "
            f"for {audio_s:.0f} s of audio) -> {out_dir}")
        results.append(result)
    return results


def read_hypotheses(out_dir: Path) -> dict[str, str]:
    return read_kaldi_table(Path(out_dir) / "text")


def evaluate_stage(label: str, make_backend: Callable[[], Backend], conf: DecodeConfig, manifest: Path,
                   feat_conf: FeatureConfig, tokenizer: CharTokenizer, inputs: list[Path], extra: dict,
                   base_prefix: Path, *, force: bool = False, kept: KeptFeatures | None = None, log=print) -> Path:
    """Stages 3, 5 and 6: decode with every method unless all of their result directories are complete
    for these inputs and settings; returns the prefix the directories share (mode included). `kept`:
    one per process, shared by its runs (`KeptFeatures`)."""
    if not Path(manifest).is_file():
        name = Path(manifest).parent.name or Path(manifest).name
        raise AsrError(f"{label}: test set {name} has no manifest {manifest}; stage 0 writes "
                       "one per set it prepares: check the set's name in --test_sets, or run stage 0 for it")
    prefix = base_prefix.parent / mode_prefix(base_prefix.name, conf)
    dirs = [result_dir(prefix, m) for m in conf.methods]
    context = context_graph_for(conf, tokenizer)  # a bad list stops the stage before any work
    if context is not None:
        inputs = [*inputs, Path(conf.context_list)]
    fp = fingerprint("evaluate-v2", label, dataclasses.asdict(conf), *inputs)
    if reuse_or_clear(dirs, fp, label, force, log, noun="result"):
        for d in dirs:
            r = json.loads((d / "result.json").read_text(encoding="utf-8"))
            log(f"{label} {r['search']}: {r['metric']} {r['error_rate']:.2f} % RTF {r['rtf']:.4f} "
                f"(reused {d}; --force redoes)")
        return prefix
    # The data set is the manifest's folder (data/test_clean/data.list -> test_clean).
    extra = {"test_set": Path(manifest).parent.name, **extra}
    evaluate(make_backend(), conf, Path(manifest), tokenizer, feat_conf, prefix, label=label, extra=extra,
             context=context, kept=kept, log=log)
    for d in dirs:
        mark_complete(d, fp)
    return prefix


def compare_with(ours_prefix: Path, theirs_prefix: Path, methods: list[str], log=print) -> int:
    """Stage 5's promise: the exported model gives stage 3's hypothesis on every utterance, for every
    method. Returns 1 (and logs the differences) when it does not."""
    failed = 0
    for method in methods:
        theirs_dir = result_dir(theirs_prefix, method)
        if not (theirs_dir / "text").is_file():
            log(f"stage 5: no dynamic-graph result in {theirs_dir} to compare {method} with (run stage 3)")
            failed += 1
            continue
        ours, theirs = read_hypotheses(result_dir(ours_prefix, method)), read_hypotheses(theirs_dir)
        differ = sorted(k for k in theirs if ours.get(k) != theirs[k])
        if differ:
            for k in differ[:10]:
                log(f"  {method} {k}: dynamic graph '{theirs[k]}' vs exported '{ours.get(k)}'")
            log(f"error: {method}: the exported model differs from {theirs_dir} on {len(differ)} of {len(theirs)} "
                "utterances")
            failed += 1
        else:
            log(f"stage 5: {method}: same hypothesis as the dynamic graph on all {len(theirs)} utterances")
    return 1 if failed else 0
