"""Stage 6: an INT8 bundle from an FP32 one, calibrated on training utterances.

Chooses the calibration utterances, feeds each quantized program the inputs it meets when decoding
(the encoder: fbank batches; the attention decoder: teacher-forced transcripts against the FP32
encoder's output), runs `quantize.quantize_ptq` on each requested program with its family's
defaults (`paddle_asr.families`), copies the other programs, and records the result.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from paddle_asr.artifacts import (
    atomic_directory,
    atomic_write_text,
    done_marker,
    fingerprint,
    mark_complete,
    reuse_or_clear,
)
from paddle_asr.cpu_settings import cpu_has_vnni
from paddle_asr.data.dataset import iterate_batches, make_batches
from paddle_asr.data.manifest import read_manifest
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import copy_bundle_files, read_bundle
from paddle_asr.export.quantize import EDGE_LAYERS, quantize_ptq
from paddle_asr.export.runtime import load_backend
from paddle_asr.families import bundle_family, family

# Programs stage 6 can be asked to quantize (a bundle may lack some: DeepSpeech2 has no decoder).
# A streaming bundle's `encoder_chunk` comes with the encoder (see `chunk_follows_encoder`).
QUANTIZABLE = ("encoder", "decoder")
# Chunk size (encoder frames) at which the calibration utterances stream through the FP32 chunk
# program to record its calibration inputs: the recipes' chunk decoding size.
CALIBRATION_CHUNK = 16
NO_VNNI_WARNING = (
    "warning: this CPU has no VNNI (AVX-512 VNNI, AVX-VNNI or AMX). oneDNN's INT8 kernels here sum 8-bit "
    "products in 16 bits, which saturate, and gain little over FP32 (measured on an AMD EPYC Zen 3: 1.0-1.4x). "
    "Expect a higher error rate than FP32; for INT8, quantize and run on a CPU with VNNI (Intel Cascade Lake or "
    "later, AMD Zen 4 or later). See docs/export_int8.md.")


def default_fp32_layers(model: str, vnni: bool) -> tuple[str, ...]:
    """The edge layers `--fp32_layers auto` keeps in FP32 for the family `model` on this kind of CPU."""
    return family(model, where="meta.json model").quantization.fp32_layers_for(vnni)


def fp32_layers_option(option: str, model: str) -> tuple[str, ...]:
    """The ``--fp32_layers`` choice as edge-layer names (see quantize.edge_layer_weights)."""
    if option == "auto":
        return default_fp32_layers(model, cpu_has_vnni())
    if option == "none":
        return ()
    layers = tuple(x for x in option.split(",") if x)
    unknown = [x for x in layers if x not in EDGE_LAYERS]
    if unknown or not layers:
        raise AsrError(f"--fp32_layers {option}: choose auto, none, or a comma-separated list of "
                       f"{', '.join(EDGE_LAYERS)}")
    return layers


def quantized_functions(option: str, bundle: Path, meta: dict) -> list[str]:
    """``--functions`` as program names, each one the bundle has."""
    functions = [f for f in option.split(",") if f]
    unknown = [f for f in functions if f not in QUANTIZABLE]
    if unknown or not functions:
        raise AsrError(f"--functions {option}: quantizable programs are {' and '.join(QUANTIZABLE)}")
    absent = [f for f in functions if f not in meta.get("functions", [])]
    if absent:  # e.g. decoder of a DeepSpeech2 (CTC-only) bundle
        raise AsrError(f"--functions {option}: {bundle} has no {', '.join(absent)} program; its "
                       f"{meta.get('model')} model exports {', '.join(meta.get('functions', []))}")
    return functions


def chunk_follows_encoder(names: list[str], meta: dict, fam) -> bool:
    """Whether the streaming `encoder_chunk` is quantized too: when the encoder is, the bundle streams
    and its family says so (`QuantDefaults.quantize_chunk`), so that streaming runs what the
    full-utterance encoder runs in INT8."""
    return ("encoder" in names and "encoder_chunk" in meta.get("functions", []) and bool(meta.get("supports_streaming"))
            and fam.quantization.quantize_chunk)


def chunk_fp32_layers(layers: tuple[str, ...]) -> tuple[str, ...]:
    """The encoder's FP32 edge layers, as found in the chunk program: the first convolution. The
    encoder's output layer is the CTC projection, which the chunk program lacks (it is in the FP32
    `ctc_activation`); the chunk program's last product is an encoder layer's, INT8 in the encoder."""
    return tuple(layer for layer in layers if layer != "output_layer")


def require_calibration_manifest(manifest: Path | str) -> None:
    if not Path(manifest).is_file():
        raise AsrError(f"stage 6 (INT8): calibration manifest {manifest} does not exist; pass --calib the "
                       "training set's data.list, which stage 0 writes (e.g. data/train/data.list)")


def calibration_utterances(manifest: Path, num: int) -> list:
    """`num` utterances of a training manifest (never test), spread over it in key order."""
    require_calibration_manifest(manifest)
    utts = read_manifest(Path(manifest))
    step = max(1, len(utts) // num)
    return sorted(utts, key=lambda u: u.key)[::step][:num]


def calibration_batches(fp32_dir: Path, utts: list, batch_size: int) -> Callable[[], Iterator]:
    """A callable yielding the calibration utterances' batches, read with the bundle's features and units."""
    _, features, tokenizer = read_bundle(fp32_dir)
    return lambda: iterate_batches(make_batches(utts, batch_size), tokenizer, features, train=False)


def calibration_feeds(fp32_dir: Path, meta: dict, utts: list, batch_size: int) -> dict[str, Callable[[], Iterator]]:
    """{program: a callable yielding its calibration batches} for `quantize_ptq`."""
    batches = calibration_batches(fp32_dir, utts, batch_size)

    def encoder_batches():
        for b in batches():
            yield b.feats, b.feat_lengths

    def decoder_batches():
        # Teacher forcing on the calibration utterances: `<sos> transcript` against the FP32
        # encoder's output, the inputs the decoder meets in rescoring and beam search.
        from paddle_asr.decode.search import pad_hypotheses

        backend = load_backend(fp32_dir, meta)
        for b in batches():
            enc, enc_lengths, _ = backend.encode(b.feats, b.feat_lengths)
            rows = [list(row[:n]) for row, n in zip(b.labels, b.label_lengths)]
            hyps, lengths = pad_hypotheses(rows, backend.sos, backend.eos)
            yield {"hyps": hyps, "hyps_lengths": lengths, "encoder_out": enc, "encoder_lengths": enc_lengths}

    def chunk_batches():
        # Each utterance streamed alone through the FP32 chunk program: batch 1, as transcribe runs it.
        backend = load_backend(fp32_dir, meta)
        for b in batches():
            yield from backend.chunk_program_feeds((f[:n] for f, n in zip(b.feats, b.feat_lengths)), CALIBRATION_CHUNK)

    return {"encoder": encoder_batches, "decoder": decoder_batches, "encoder_chunk": chunk_batches}


def onnx_calibration(onnx_dir: Path, fp32_dir: Path, calib: Path | str, num_calib: int, batch_size: int) -> dict:
    """The ONNX INT8 export's calibration (`export.onnx_int8.Calibration`): the encoder's fbank
    batches, and the inputs the ONNX chunk program meets when each utterance streams alone."""
    from paddle_asr.export.onnx import CHUNK, ENCODER
    from paddle_asr.export.onnx_backend import load_onnx_backend

    meta, _, _ = read_bundle(fp32_dir)
    batches = calibration_batches(fp32_dir, calibration_utterances(calib, num_calib), batch_size)

    def encoder_feeds():
        for b in batches():
            yield {"feats": b.feats, "feats_lengths": np.asarray(b.feat_lengths, np.int64)}

    def chunk_feeds():
        backend = load_onnx_backend(onnx_dir, meta)
        for b in batches():
            yield from backend.chunk_program_feeds((f[:n] for f, n in zip(b.feats, b.feat_lengths)), CALIBRATION_CHUNK)

    streams = bool(meta.get("supports_streaming")) and (Path(onnx_dir) / CHUNK).is_file()
    return {ENCODER: encoder_feeds, **({CHUNK: chunk_feeds} if streams else {})}


def quantize_bundle(fp32_dir: Path, out: Path, calib: Path | str, *, num_calib: int = 64, batch_size: int = 8,
                    functions: str = "encoder", fp32_layers: str = "auto", force: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """Write the INT8 bundle `out` from the FP32 bundle `fp32_dir`, the programs named in `functions`
    calibrated on `num_calib` utterances of the manifest `calib`; reuses a complete `out` made from
    the same inputs. Returns {program: quantize_ptq report} ({} when reused)."""
    fp32_dir, out = Path(fp32_dir), Path(out)
    meta, _, _ = read_bundle(fp32_dir)
    require_calibration_manifest(calib)  # before the fingerprint reads it
    if not cpu_has_vnni():
        log(f"stage 6 (INT8): {NO_VNNI_WARNING}")
    fam = bundle_family(fp32_dir, meta)
    layers = fp32_layers_option(fp32_layers, fam.name)
    fp = fingerprint("quantize-v4", done_marker(fp32_dir), Path(calib), num_calib, batch_size, functions,
                     ",".join(layers))
    if reuse_or_clear(out, fp, "stage 6 (INT8)", force, log, noun="INT8 model"):
        return {}
    utts = calibration_utterances(calib, num_calib)
    names = quantized_functions(functions, fp32_dir, meta)
    if chunk_follows_encoder(names, meta, fam):
        names.append("encoder_chunk")
    feeds = calibration_feeds(fp32_dir, meta, utts, batch_size)
    reports = {}
    with atomic_directory(out) as tmp:
        for name in meta.get("functions", []):
            if name in names:
                edges = chunk_fp32_layers(layers) if name == "encoder_chunk" else layers
                reports[name] = quantize_ptq(fp32_dir / name, tmp / name, feeds[name], fp32_layers=edges,
                                             algo=fam.quantization.algo, quantizable_op_type=fam.quantization.op_types)
            else:
                shutil.copytree(fp32_dir / name, tmp / name)
        copy_bundle_files(fp32_dir, tmp, precision="int8", int8_functions=names,
                          calibration={"manifest": str(calib), "utterances": len(utts)})
        atomic_write_text(tmp / "quantize_report.json", json.dumps(reports, indent=1))
    mark_complete(out, fp)
    for name, report in reports.items():
        log(f"stage 6 (INT8): {name} calibrated on {len(utts)} training utterances; quantized ops "
            f"{report.get('quantized_ops')}; left in FP32 {report.get('fp32_ops')}; "
            f"{report['fp32_bytes'] / 1e6:.2f} MB FP32 -> {report['int8_bytes'] / 1e6:.2f} MB INT8")
    log(f"stage 6 (INT8): other programs stay FP32 -> {out}")
    return reports
