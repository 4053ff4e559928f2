"""Checkpoints written atomically, their records, and averaging of the best N by dev loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle

from paddle_asr.artifacts import atomic_output_file, atomic_write_text
from paddle_asr.errors import AsrError


def save_checkpoint(ckpt_dir: Path, epoch: int, model, optimizer, info: dict) -> Path:
    """`<epoch>.pdparams`, `<epoch>.pdopt`, then `<epoch>.json` last: a checkpoint counts only
    once its JSON record exists, so a run killed while saving never leaves one that looks valid."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    params = ckpt_dir / f"{epoch}.pdparams"
    with atomic_output_file(params) as tmp:
        paddle.save(model.state_dict(), str(tmp))
    with atomic_output_file(ckpt_dir / f"{epoch}.pdopt") as tmp:
        paddle.save(optimizer.state_dict(), str(tmp))
    atomic_write_text(ckpt_dir / f"{epoch}.json", json.dumps({"epoch": epoch, **info}, indent=1))
    return params


def list_checkpoints(ckpt_dir: Path) -> list[dict]:
    """Records of complete epoch checkpoints (those with both .json and .pdparams), by epoch."""
    records = []
    for record in ckpt_dir.glob("*.json"):
        if not record.stem.isdigit():
            continue  # averaged models and other records are not epoch checkpoints
        params = record.with_suffix(".pdparams")
        if not params.is_file():
            continue
        info = json.loads(record.read_text(encoding="utf-8"))
        info["path"] = str(params)
        records.append(info)
    return sorted(records, key=lambda r: r["epoch"])


def average_best(ckpt_dir: Path, num: int, out_path: Path, log=print) -> dict:
    """Average the `num` checkpoints with the lowest dev loss into `out_path` (+ provenance JSON)."""
    records = [r for r in list_checkpoints(ckpt_dir) if np.isfinite(r.get("dev_loss", float("nan")))]
    if not records:
        raise AsrError(f"no complete checkpoint with a dev loss in {ckpt_dir}; run stage 1 (training) first")
    if len(records) < num:
        log(f"stage 2: only {len(records)} checkpoints exist, fewer than average_num={num}: averaging all of them")
    best = sorted(records, key=lambda r: (r["dev_loss"], r["epoch"]))[:num]
    summed: dict[str, np.ndarray] = {}
    for r in best:
        state = paddle.load(r["path"])
        for k, v in state.items():
            arr = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
            summed[k] = summed.get(k, 0) + arr.astype(np.float64)
    reference = paddle.load(best[0]["path"])
    averaged = {}
    for k, total in summed.items():
        dtype = reference[k].numpy().dtype
        mean = total / len(best)
        # Integer buffers (counters) are floored, not turned into floats.
        averaged[k] = paddle.to_tensor(np.floor(mean).astype(dtype) if np.issubdtype(dtype, np.integer) else mean.astype(dtype))
    with atomic_output_file(out_path) as tmp:
        paddle.save(averaged, str(tmp))
    provenance = {
        "averaged": [{"epoch": r["epoch"], "dev_loss": r["dev_loss"]} for r in best],
        "num_requested": num,
    }
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(provenance, indent=1))
    log(f"stage 2: averaged epochs {[r['epoch'] for r in best]} (dev loss "
        f"{min(r['dev_loss'] for r in best):.3f}-{max(r['dev_loss'] for r in best):.3f}) -> {out_path}")
    return provenance
