"""Checkpoints of the full training state, written so that a kill at any moment leaves none half-made.

A checkpoint `<name>` is `<name>.pdparams` (model), `<name>.pdopt` (optimizer, with the learning-rate
schedule inside), `<name>.pdscaler` (fp16 loss scaler, when used) and `<name>.json`, its record:
epoch, optimizer updates, the index of the next batch of the epoch, losses. Each file goes to a
temporary name and is renamed into place; the record is written last, and a checkpoint exists only
once its record does. Epoch checkpoints are named by epoch (`7`), mid-epoch ones `step_<updates>`.

The random state needs no saving: every draw is seeded from (seed, epoch, batch or utterance id),
so the counters in the record restore it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle

from paddle_asr.artifacts import atomic_output_file, atomic_write_text
from paddle_asr.errors import AsrError

STEP_PREFIX = "step_"
STATE_SUFFIXES = (".pdparams", ".pdopt", ".pdscaler")


def save_checkpoint(ckpt_dir: Path, name: str, model, optimizer, scaler, record: dict) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    params = ckpt_dir / f"{name}.pdparams"
    states = [(params, model.state_dict()), (ckpt_dir / f"{name}.pdopt", optimizer.state_dict())]
    if scaler is not None:
        states.append((ckpt_dir / f"{name}.pdscaler", scaler.state_dict()))
    written = []
    try:
        for path, state in states:
            with atomic_output_file(path) as tmp:
                paddle.save(state, str(tmp))
            written.append(path)
        atomic_write_text(ckpt_dir / f"{name}.json", json.dumps({"name": name, **record}, indent=1))
    except OSError as e:
        # Disk full, quota, a vanished mount: the parts already written go, so no record-less
        # files take the space; earlier checkpoints were never touched and stay valid.
        for path in written:
            path.unlink(missing_ok=True)
        kept = latest_checkpoint(ckpt_dir)
        raise AsrError(f"cannot write checkpoint {name} in {ckpt_dir} ({e.strerror or e}); "
                       + (f"the previous checkpoint {kept['name']} is intact: " if kept else "")
                       + "free space there and run stage 1 again to resume") from None
    return params


def _records(ckpt_dir: Path) -> list[dict]:
    records = []
    for path in Path(ckpt_dir).glob("*.json"):
        name = path.stem
        if not (name.isdigit() or name.startswith(STEP_PREFIX)) or not path.with_suffix(".pdparams").is_file():
            continue  # averaged models and other records are not training checkpoints
        info = json.loads(path.read_text(encoding="utf-8"))
        info["path"] = str(path.with_suffix(".pdparams"))
        records.append(info)
    return records


def list_checkpoints(ckpt_dir: Path) -> list[dict]:
    """Records of the complete epoch checkpoints, by epoch."""
    return sorted((r for r in _records(ckpt_dir) if r["name"].isdigit()), key=lambda r: r["epoch"])


def latest_checkpoint(ckpt_dir: Path) -> dict | None:
    """The record of the checkpoint furthest into training (epoch or mid-epoch), or None."""
    records = _records(ckpt_dir)
    # At equal progress the epoch checkpoint wins: it also holds the dev loss.
    return max(records, key=lambda r: (r["epoch"], r["batch"], r["name"].isdigit()), default=None)


def load_checkpoint(record: dict, model, optimizer, scaler) -> None:
    base = Path(record["path"]).with_suffix("")
    model.set_state_dict(paddle.load(str(base.with_suffix(".pdparams"))))
    optimizer.set_state_dict(paddle.load(str(base.with_suffix(".pdopt"))))
    if scaler is not None and base.with_suffix(".pdscaler").is_file():
        scaler.load_state_dict(paddle.load(str(base.with_suffix(".pdscaler"))))


def remove_checkpoint(ckpt_dir: Path, name: str) -> None:
    """The record goes first: from then on the checkpoint no longer counts, whatever is left."""
    (ckpt_dir / f"{name}.json").unlink(missing_ok=True)
    for suffix in STATE_SUFFIXES:
        (ckpt_dir / f"{name}{suffix}").unlink(missing_ok=True)


def remove_stale_files(ckpt_dir: Path) -> list[str]:
    """Temporary files of a run killed while saving; they never count, but take disk space."""
    stale = [p for p in Path(ckpt_dir).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return [p.name for p in stale]


def prune_checkpoints(ckpt_dir: Path, keep: int) -> list[str]:
    """Drop mid-epoch checkpoints older than the latest checkpoint, and (keep > 0) the epoch
    checkpoints that are neither among the `keep` best by dev loss nor the `keep` latest."""
    latest = latest_checkpoint(ckpt_dir)
    removed = [r["name"] for r in _records(ckpt_dir)
               if r["name"].startswith(STEP_PREFIX) and r["name"] != (latest or {}).get("name")]
    epochs = list_checkpoints(ckpt_dir)
    if keep > 0 and len(epochs) > keep:
        best = sorted(epochs, key=lambda r: (r.get("dev_loss", float("inf")), r["epoch"]))[:keep]
        kept = {r["name"] for r in best + epochs[-keep:]}
        removed += [r["name"] for r in epochs if r["name"] not in kept]
    for name in removed:
        remove_checkpoint(ckpt_dir, name)
    return removed


def averaged_name(num: int, mode: str) -> str:
    """`avg_<N>.pdparams` for the N best (PaddleSpeech's name), `avg_last_<N>.pdparams` for the N latest."""
    return f"avg_{num}.pdparams" if mode == "best" else f"avg_{mode}_{num}.pdparams"


def choose_for_average(ckpt_dir: Path, num: int, mode: str) -> list[dict]:
    """The `num` epoch checkpoints with the lowest dev loss (mode best) or the latest (mode last)."""
    if mode not in ("best", "last"):
        raise AsrError(f"average mode '{mode}' unknown; use best or last")
    records = [r for r in list_checkpoints(ckpt_dir) if np.isfinite(r.get("dev_loss", float("nan")))]
    if len(records) < num:
        raise AsrError(f"{ckpt_dir} holds {len(records)} complete epoch checkpoints, fewer than the {num} to average; "
                       f"train more epochs, or average fewer (paddle-asr average --num {max(len(records), 1)}, or "
                       "training.average_num in the config)")
    if mode == "last":
        return records[-num:]
    return sorted(records, key=lambda r: (r["dev_loss"], r["epoch"]))[:num]


def average_checkpoints(ckpt_dir: Path, num: int, out_path: Path, *, mode: str = "best", log=print) -> dict:
    """Average the chosen checkpoints' parameters into `out_path`, with a JSON of what went in."""
    chosen = choose_for_average(ckpt_dir, num, mode)
    summed: dict[str, np.ndarray] = {}
    for r in chosen:
        for k, v in paddle.load(r["path"]).items():
            summed[k] = summed.get(k, 0) + v.numpy().astype(np.float64)
    reference = paddle.load(chosen[0]["path"])
    averaged = {}
    for k, total in summed.items():
        dtype = reference[k].numpy().dtype
        mean = total / len(chosen)
        # Integer buffers (counters) are floored, not turned into floats.
        value = np.floor(mean).astype(dtype) if np.issubdtype(dtype, np.integer) else mean.astype(dtype)
        averaged[k] = paddle.to_tensor(value)
    with atomic_output_file(out_path) as tmp:
        paddle.save(averaged, str(tmp))
    averaged_from = [{"epoch": r["epoch"], "dev_loss": r["dev_loss"], "dev_error_rate": r.get("dev_error_rate")}
                     for r in chosen]
    provenance = {"mode": mode, "num": num, "averaged": averaged_from}
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(provenance, indent=1))
    losses = [r["dev_loss"] for r in chosen]
    log(f"stage 2: averaged the {mode} {num} epochs {[r['epoch'] for r in chosen]} (dev loss {min(losses):.3f}-"
        f"{max(losses):.3f}) -> {out_path}")
    return provenance
