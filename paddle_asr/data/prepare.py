"""Stage 0: corpus -> `data/<set>/` (wav.scp, text, data.list) for every set, units and CMVN.

Written once for every corpus; a corpus module only finds, unpacks and lists its utterances
(AISHELL: fixed train/dev/test; LibriSpeech: sets made of subsets, e.g. train_960 = the three
training subsets). Units come from the training set's text only: characters, or a sentencepiece
unigram model (trained here, or given) and the pieces it uses.
The whole `data/` directory is built under a temporary name and renamed when complete, so a
killed run leaves nothing a re-run would trust.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np

from paddle_asr.artifacts import atomic_directory, atomic_write_text, fingerprint, mark_complete, reuse_or_clear
from paddle_asr.config import DataConfig, FeatureConfig
from paddle_asr.cpu_settings import usable_cores
from paddle_asr.data.audio import read_audio
from paddle_asr.data.corpora import aishell, librispeech
from paddle_asr.data.manifest import Utterance, read_manifest, write_kaldi_table, write_manifest
from paddle_asr.data.tokenizer import BPE_MODEL, build_bpe_units, build_char_units, train_sentencepiece, write_units
from paddle_asr.errors import AsrError
from paddle_asr.features import CmvnAccumulator, compute_fbank

# A corpus module provides locate(corpus_dir, log) -> root (unpacking archives),
# read_splits(root, sample_rate, sets) -> {set: (kept, dropped)} and fingerprint_inputs(root, sets).
CORPORA: dict[str, ModuleType] = {"aishell": aishell, "librispeech": librispeech}


def train_set_name(data_conf: DataConfig) -> str:
    """The set whose manifest the config trains on: `data/<name>/data.list` -> name."""
    return Path(data_conf.train).parent.name


def _write_units(train: list[Utterance], lang_dir: Path, data_conf: DataConfig, log, shown: Path) -> list[str]:
    texts = [u.text for u in train]
    if data_conf.units == "char":
        return build_char_units(texts)
    if data_conf.units != "bpe":
        raise AsrError(f"data.units must be char or bpe, got '{data_conf.units}'")
    model = lang_dir / BPE_MODEL
    if data_conf.bpe_model:
        given = Path(data_conf.bpe_model)
        if not given.is_file():
            raise AsrError(f"data.bpe_model {given} does not exist; give a trained sentencepiece .model file, "
                           "or leave it empty to train one on the training text")
        lang_dir.mkdir(parents=True, exist_ok=True)
        model.write_bytes(given.read_bytes())
        log(f"stage 0: sentencepiece model {given} -> {shown / BPE_MODEL}")
    else:
        train_sentencepiece(texts, model, data_conf.bpe_size)
        log(f"stage 0: trained a {data_conf.bpe_size}-piece unigram sentencepiece model on {len(texts)} "
            f"training transcripts -> {shown / BPE_MODEL}")
    return build_bpe_units(texts, model)


def _cmvn_part(args: tuple[list[str], FeatureConfig]) -> tuple[np.ndarray, np.ndarray, int]:
    wavs, feat_conf = args
    acc = CmvnAccumulator(feat_conf.num_mel_bins)
    for wav in wavs:
        waveform, _ = read_audio(Path(wav), expected_rate=feat_conf.sample_rate)
        acc.add(compute_fbank(waveform, feat_conf))  # no dither: statistics of clean features
    return acc.sum, acc.sumsq, acc.frames


def compute_cmvn(utts: list[Utterance], feat_conf: FeatureConfig, nj: int) -> CmvnAccumulator:
    """Global CMVN over every training utterance, in `nj` processes."""
    wavs = [u.wav for u in utts]
    parts = [(wavs[i::nj], feat_conf) for i in range(nj)]
    acc = CmvnAccumulator(feat_conf.num_mel_bins)
    if nj == 1:
        results = [_cmvn_part(parts[0])]
    else:
        with ProcessPoolExecutor(nj) as pool:
            results = list(pool.map(_cmvn_part, parts))
    for s, sq, n in results:
        acc.sum += s
        acc.sumsq += sq
        acc.frames += n
    return acc


def _report_unknown_units(splits: dict, train_set: str, out_dir: Path, data_conf: DataConfig, summary: dict,
                          log, shown: Path) -> None:
    """Count, per set, the characters (or pieces) outside the training units: they become <unk> in
    training and scoring. Written to <set>/oov.txt as `id<TAB>count<TAB>the characters`."""
    from paddle_asr.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(out_dir / "lang_char" / "vocab.txt", data_conf.units)
    for split, (kept, _) in splits.items():
        rows = []
        for u in kept:
            missing = [p for p in tokenizer.pieces(u.text) if p not in tokenizer.index]
            if missing:
                rows.append(f"{u.key}\t{len(missing)}\t{' '.join(sorted(set(missing)))}\n")
        atomic_write_text(out_dir / split / "oov.txt", "".join(rows))
        total = sum(int(r.split("\t")[1]) for r in rows)
        summary["splits"][split]["unknown_units"] = total
        if rows:
            log(f"stage 0: {split}: {total} {'characters' if data_conf.units == 'char' else 'pieces'} in {len(rows)} "
                f"utterances are not among the units and become <unk> (ids in {shown}/{split}/oov.txt)")


def prepare_data(
    corpus: str,
    corpus_dir: Path,
    data_dir: Path,
    feat_conf: FeatureConfig,
    data_conf: DataConfig | None = None,
    *,
    sets: dict[str, list[str]] | None = None,
    nj: int = 2,
    force: bool = False,
    log=print,
) -> dict:
    """Build `data_dir`: one folder per set, `lang_char/vocab.txt` (and `bpe.model`), summary.json.

    `sets` maps data set names to corpus subsets (LibriSpeech); None takes the corpus's default.
    """
    if corpus not in CORPORA:
        raise AsrError(f"unknown corpus '{corpus}'; known: {', '.join(sorted(CORPORA))}")
    data_conf = data_conf or DataConfig()
    reader = CORPORA[corpus]
    root = reader.locate(Path(corpus_dir), log)
    train_set = train_set_name(data_conf)
    given_bpe = Path(data_conf.bpe_model) if data_conf.units == "bpe" and data_conf.bpe_model else None
    # Only the sample rate shapes the manifests; CMVN, which depends on the features, is `prepare_cmvn`'s.
    fp = fingerprint("prepare-v4", corpus, reader.fingerprint_inputs(root, sets), feat_conf.sample_rate, sets,
                     train_set, data_conf.units, data_conf.bpe_size if data_conf.units == "bpe" else None,
                     given_bpe if given_bpe and given_bpe.is_file() else str(given_bpe))
    data_dir = Path(data_dir)
    if reuse_or_clear(data_dir, fp, "stage 0 (data)", force, log):
        return json.loads((data_dir / "summary.json").read_text(encoding="utf-8"))

    splits = reader.read_splits(root, feat_conf.sample_rate, sets)
    if train_set not in splits:
        raise AsrError(f"the config trains on data/{train_set} (data.train: {data_conf.train}) but stage 0 builds "
                       f"{', '.join(sorted(splits))}; set data.train to one of them, or name {train_set} in --sets")
    if not splits[train_set][0]:
        raise AsrError(f"no usable training utterance in {root}; check the corpus (see the reasons above)")
    summary: dict = {"corpus": corpus, "corpus_dir": str(root), "splits": {}}
    with atomic_directory(data_dir) as tmp:
        for split, (kept, dropped) in splits.items():
            out = tmp / split
            write_kaldi_table({u.key: u.wav for u in kept}, out / "wav.scp")
            write_kaldi_table({u.key: u.text for u in kept}, out / "text")
            write_manifest(kept, out / "data.list")
            atomic_write_text(out / "dropped.txt", "".join(f"{k}\t{r}\n" for k, r in dropped))
            hours = sum(u.duration for u in kept) / 3600
            summary["splits"][split] = {"kept": len(kept), "dropped": len(dropped), "hours": round(hours, 4)}
            log(f"stage 0: {split}: {len(kept)} utterances ({hours:.2f} h) kept, {len(dropped)} left out")
            for key, reason in dropped:
                log(f"stage 0:   left out {key}: {reason}")
        train = splits[train_set][0]
        units = _write_units(train, tmp / "lang_char", data_conf, log, shown=Path(data_dir) / "lang_char")
        write_units(units, tmp / "lang_char" / "vocab.txt")
        kind = "characters" if data_conf.units == "char" else "sentencepiece pieces"
        log(f"stage 0: {len(units)} units ({len(units) - 3} {kind} of {train_set}) -> {data_dir}/lang_char/vocab.txt")
        _report_unknown_units(splits, train_set, tmp, data_conf, summary, log, Path(data_dir))
        unused = reader.unused_transcripts(root) if hasattr(reader, "unused_transcripts") else []
        if unused:
            atomic_write_text(tmp / "unused_transcripts.txt", "".join(f"{k}\n" for k in unused))
            log(f"stage 0: {len(unused)} transcript lines have no audio file and are not used "
                f"(ids in {data_dir}/unused_transcripts.txt)")
        summary["unused_transcripts"] = len(unused)
        summary["units"] = len(units)
        summary["unit_type"] = data_conf.units
        summary["train_set"] = train_set
        atomic_write_text(tmp / "summary.json", json.dumps(summary, ensure_ascii=False, indent=1))
        mark_complete(tmp, fp)
    return summary


def prepare_cmvn(data_dir: Path, feat_conf: FeatureConfig, cmvn_path: Path, *, nj: int = 2, force: bool = False,
                 log=print, train_set: str = "train") -> None:
    """Global CMVN of the training manifest for these features (models with other features, e.g.
    DeepSpeech2's 161 bins, keep their own file beside the 80-bin one)."""
    cmvn_path = Path(cmvn_path)
    manifest = Path(data_dir) / train_set / "data.list"
    fp = fingerprint("cmvn-v2", manifest, feat_conf.__dict__)
    if reuse_or_clear(cmvn_path, fp, "stage 0 (data)", force, log, noun="CMVN"):
        return
    train = read_manifest(manifest)
    acc = compute_cmvn(train, feat_conf, max(1, min(nj, usable_cores())))
    atomic_write_text(cmvn_path, acc.to_json())
    mark_complete(cmvn_path, fp)
    log(f"stage 0: CMVN of {feat_conf.num_mel_bins}-bin fbank over {acc.frames} frames of {len(train)} training "
        f"utterances -> {cmvn_path}")
