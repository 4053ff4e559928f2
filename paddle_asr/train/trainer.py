"""Stage 1: train from a resolved config, one checkpoint per epoch, VisualDL scalars.

The resolved config (with vocab_size, input_dim and data paths) is written to
`exp/<name>/train.yaml` before the first step; every later stage reads only that file.
A finished run is marked complete; re-running reuses it when nothing changed, otherwise the
experiment directory is rebuilt whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import paddle

from paddle_asr.artifacts import fingerprint, mark_complete, reuse_or_clear
from paddle_asr.config import AsrConfig, config_to_dict, save_config
from paddle_asr.data.dataset import filter_utterances, iterate_batches, make_batches
from paddle_asr.data.manifest import read_manifest
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.errors import AsrError
from paddle_asr.models.registry import build_model_for_training
from paddle_asr.train.checkpoint import save_checkpoint
from paddle_asr.train.scheduler import build_scheduler


def set_threads(num_threads: int) -> int:
    """Use every core unless told otherwise: `import paddle` alone leaves CPU kernels on one thread."""
    n = num_threads or os.cpu_count() or 1
    paddle.base.core.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)  # also drives the dynamic chunk sizes
    np.random.seed(seed)
    paddle.seed(seed)


def resolve_config(config: AsrConfig, recipe_dir: Path) -> AsrConfig:
    """Fill the derived fields from the prepared data: vocabulary size and feature dimension."""
    tokenizer = CharTokenizer.from_file(recipe_dir / config.data.vocab)
    return dataclasses.replace(config, vocab_size=tokenizer.vocab_size, input_dim=config.features.num_mel_bins)


def _dev_loss(model, batches, tokenizer, config) -> dict[str, float]:
    """Utterance-weighted mean of the total loss and its parts over the dev set (non-finite batches skipped)."""
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    with paddle.no_grad():
        for b in iterate_batches(batches, tokenizer, config.features, train=False):
            loss, parts = model(paddle.to_tensor(b.feats), paddle.to_tensor(b.feat_lengths),
                                paddle.to_tensor(b.labels), paddle.to_tensor(b.label_lengths))
            values = {"loss": float(loss), **{k: float(v) for k, v in parts.items()}}
            if not all(math.isfinite(v) for v in values.values()):
                continue
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v * len(b.keys)
            count += len(b.keys)
    model.train()
    return {k: v / max(count, 1) for k, v in totals.items()} if count else {"loss": float("inf")}


def train(config: AsrConfig, recipe_dir: Path, exp_dir: Path, *, force: bool = False, log=print) -> Path:
    recipe_dir, exp_dir = Path(recipe_dir), Path(exp_dir)
    config = resolve_config(config, recipe_dir)
    inputs = [recipe_dir / p for p in (config.data.train, config.data.dev, config.data.vocab, config.data.cmvn)]
    for p in inputs:
        if not p.is_file():
            raise AsrError(f"{p} does not exist; run stage 0 (data preparation) first")
    fp = fingerprint("train-v1", config_to_dict(config), *inputs)
    if reuse_or_clear(exp_dir, fp, "stage 1 (train)", force, log):
        return exp_dir / "train.yaml"
    exp_dir.mkdir(parents=True)
    save_config(config, exp_dir / "train.yaml")

    tc = config.training
    threads = set_threads(tc.num_threads)
    seed_everything(tc.seed)
    tokenizer = CharTokenizer.from_file(recipe_dir / config.data.vocab)
    model = build_model_for_training(config, recipe_dir)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    log(f"stage 1: {config.model.name}, {n_params / 1e6:.2f} M parameters, {threads} threads")

    def load(split_path: str, name: str):
        utts, dropped = filter_utterances(
            read_manifest(recipe_dir / split_path), tokenizer, config.features,
            min_duration=tc.min_duration_s, max_duration=tc.max_duration_s,
            subsampled_frames=model.encoder.output_length,
        )
        log(f"stage 1: {name}: {len(utts)} utterances, {len(dropped)} filtered")
        for key, reason in dropped:
            log(f"stage 1:   filtered {key}: {reason}")
        if not utts:
            raise AsrError(f"no {name} utterance is left after filtering {recipe_dir / split_path}")
        return utts

    train_batches = make_batches(load(config.data.train, "train"), tc.batch_size)
    dev_batches = make_batches(load(config.data.dev, "dev"), tc.batch_size)

    scheduler = build_scheduler(config.optim, config.scheduler)
    if config.optim.name not in ("adam", "adamw"):
        raise AsrError(f"optim.name '{config.optim.name}' unknown; use adam or adamw")
    clip = paddle.nn.ClipGradByGlobalNorm(config.optim.grad_clip)
    opt_cls = paddle.optimizer.Adam if config.optim.name == "adam" else paddle.optimizer.AdamW
    optimizer = opt_cls(learning_rate=scheduler, parameters=model.parameters(),
                        weight_decay=config.optim.weight_decay or None, grad_clip=clip)

    from visualdl import LogWriter  # imported late: it is slow to import and only training needs it

    rng = np.random.default_rng(tc.seed)
    step, skipped = 0, 0
    with LogWriter(logdir=str(exp_dir / "visualdl")) as writer:
        for epoch in range(1, tc.max_epoch + 1):
            model.train()
            order = rng.permutation(len(train_batches))
            t0, epoch_loss, epoch_n = time.time(), 0.0, 0
            for i, batch in enumerate(iterate_batches([train_batches[j] for j in order], tokenizer, config.features,
                                                      train=True, spec_conf=config.spec_augment, rng=rng), 1):
                loss, parts = model(paddle.to_tensor(batch.feats), paddle.to_tensor(batch.feat_lengths),
                                    paddle.to_tensor(batch.labels), paddle.to_tensor(batch.label_lengths))
                value = float(loss)
                if not math.isfinite(value):
                    skipped += 1
                    log(f"stage 1: epoch {epoch} batch {i}: non-finite loss, batch skipped ({batch.keys[:3]}...)")
                    optimizer.clear_grad()
                    continue
                (loss / tc.accum_grad).backward()
                epoch_loss, epoch_n = epoch_loss + value, epoch_n + 1
                if i % tc.accum_grad == 0:
                    optimizer.step()
                    optimizer.clear_grad()
                    scheduler.step()
                    step += 1
                    if step % tc.log_interval == 0:
                        writer.add_scalar("train/loss", value, step)
                        for name, part in parts.items():
                            writer.add_scalar(f"train/loss_{name}", float(part), step)
                        writer.add_scalar("train/lr", optimizer.get_lr(), step)
                        detail = " ".join(f"{k} {float(v):.3f}" for k, v in parts.items())
                        log(f"stage 1: epoch {epoch} step {step} loss {value:.3f} ({detail}) lr {optimizer.get_lr():.2e}")
            dev = _dev_loss(model, dev_batches, tokenizer, config)
            dev_loss = dev["loss"]
            train_loss = epoch_loss / max(epoch_n, 1)
            for name, v in dev.items():
                writer.add_scalar("dev/loss" if name == "loss" else f"dev/loss_{name}", v, epoch)
            writer.add_scalar("train/epoch_loss", train_loss, epoch)
            save_checkpoint(exp_dir / "checkpoints", epoch, model, optimizer,
                            {"step": step, "dev_loss": dev_loss, "train_loss": train_loss, "lr": optimizer.get_lr()})
            dev_detail = " ".join(f"{k} {v:.3f}" for k, v in dev.items() if k != "loss")
            log(f"stage 1: epoch {epoch}/{tc.max_epoch} train loss {train_loss:.3f} dev loss {dev_loss:.3f} ({dev_detail}) "
                f"({time.time() - t0:.0f} s, {step} updates)")
    summary = {"parameters": n_params, "steps": step, "skipped_batches": skipped}
    (exp_dir / "train_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    mark_complete(exp_dir, fp, **summary)
    return exp_dir / "train.yaml"
