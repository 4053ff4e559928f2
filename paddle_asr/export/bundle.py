"""A model bundle: the exported programs plus everything needed to use them without the recipe.

`<dir>/<function>/model.pdmodel` + `model.pdiparams` for each runtime function (U2: encoder,
encoder_chunk, ctc_activation, decoder; DeepSpeech2: encoder, encoder_chunk, ctc_activation; CMVN
inside the encoders), `vocab.txt` (units) and, for BPE units, `bpe.model` (sentencepiece),
`features.yaml` (fbank settings, dither 0) and
`meta.json` (model name, sizes, special tokens, streaming geometry and state shapes, precision,
provenance). Transcription needs only this directory.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import yaml

from paddle_asr.artifacts import atomic_write_text
from paddle_asr.config import AsrConfig, FeatureConfig
from paddle_asr.data.tokenizer import BPE_MODEL, CharTokenizer, load_tokenizer
from paddle_asr.errors import AsrError
from paddle_asr.families import family

META = "meta.json"
VOCAB = "vocab.txt"
FEATURES = "features.yaml"


def write_bundle_files(out_dir: Path, config: AsrConfig, vocab: Path, model, *, checkpoint: str,
                       functions: list[str]) -> None:
    """vocab, features and meta.json (shared keys plus the family's `bundle_meta`) beside the programs."""
    model_meta = family(config.model.name).bundle_meta(config, model)
    meta = {
        "model": config.model.name,
        "precision": "fp32",
        "functions": functions,
        "vocab_size": config.vocab_size,
        "input_dim": config.input_dim,
        "units": config.data.units,
        **model_meta,
        "checkpoint": checkpoint,
    }
    shutil.copyfile(vocab, out_dir / VOCAB)
    if config.data.units == "bpe":
        shutil.copyfile(Path(vocab).with_name(BPE_MODEL), out_dir / BPE_MODEL)
    features = dataclasses.replace(config.features, dither=0.0)  # decoding never dithers
    atomic_write_text(out_dir / FEATURES, yaml.safe_dump(dataclasses.asdict(features), sort_keys=False))
    atomic_write_text(out_dir / META, json.dumps(meta, ensure_ascii=False, indent=1))


def copy_bundle_files(src: Path, dst: Path, **meta_updates) -> None:
    """Carry vocab/features/meta from the FP32 bundle to a derived one (the INT8 model)."""
    shutil.copyfile(src / VOCAB, dst / VOCAB)
    if (src / BPE_MODEL).is_file():
        shutil.copyfile(src / BPE_MODEL, dst / BPE_MODEL)
    shutil.copyfile(src / FEATURES, dst / FEATURES)
    meta = json.loads((src / META).read_text(encoding="utf-8"))
    meta.update(meta_updates)
    atomic_write_text(dst / META, json.dumps(meta, ensure_ascii=False, indent=1))


def read_bundle(model_dir: Path) -> tuple[dict, FeatureConfig, CharTokenizer]:
    model_dir = Path(model_dir)
    for name in (META, VOCAB, FEATURES):
        if not (model_dir / name).is_file():
            raise AsrError(
                f"{model_dir} is not an exported model: {name} is missing; pass a directory written by "
                "stage 4 (export) or stage 6 (INT8), e.g. exp/<name>/export/fp32"
            )
    meta = json.loads((model_dir / META).read_text(encoding="utf-8"))
    features = FeatureConfig(**yaml.safe_load((model_dir / FEATURES).read_text(encoding="utf-8")))
    return meta, features, load_tokenizer(model_dir / VOCAB, meta.get("units", "char"))


def bundle_bytes(model_dir: Path) -> int:
    """Size on disk of the programs and weights (what a deployment ships)."""
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*")
               if p.suffix in (".pdmodel", ".pdiparams") or p.name == "model.json")
