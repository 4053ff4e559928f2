"""Stage 1 for real on a tiny generated corpus: data-parallel equals one process, a run killed with
SIGKILL at any point resumes to the very same parameters, and checkpoints are never half-written."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_asr.train.checkpoint import STATE_SUFFIXES, list_checkpoints

REPO = Path(__file__).resolve().parents[1]

# The tests' tiny model, smaller still, deterministic and free of per-rank randomness: no dropout, and
# layer norm in the convolution module (batch norm statistics would be per process).
TINY_CONFIG = f"""\
base: [{REPO}/recipes/aishell/conf/conformer.yaml, //conf/model/tiny_conformer.yaml]
model:
  encoder:
    subsampling_channels: 8
    output_size: 32
    attention_heads: 2
    linear_units: 64
    dropout_rate: 0.0
    positional_dropout_rate: 0.0
    cnn_module_norm: layer_norm
  decoder:
    attention_heads: 2
    linear_units: 64
    dropout_rate: 0.0
    positional_dropout_rate: 0.0
scheduler:
  warmup_steps: 20
training:
  max_epoch: {{max_epoch}}
  batch_size: {{batch_size}}
  accum_grad: 1
  log_interval: 1
  average_num: 1
  checkpoint_interval: {{checkpoint_interval}}
  num_threads: 1
"""


def write_config(
    recipe: Path, name: str, *, max_epoch: int = 1, batch_size: int = 4, checkpoint_interval: int = 0,
    training: str = "",
) -> str:
    """`training`: more lines of the training section, e.g. "  cache_features: true\n"."""
    path = recipe / "conf" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    config = TINY_CONFIG.format(max_epoch=max_epoch, batch_size=batch_size, checkpoint_interval=checkpoint_interval)
    config += training
    path.write_text(config)
    return str(path.relative_to(recipe))


def train_cmd(config: str, exp: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "paddle_asr.cli", "train", "--config", config, "--exp_dir", exp, *extra]


def run_train(recipe: Path, config: str, exp: str, *extra: str) -> str:
    proc = subprocess.run(train_cmd(config, exp, *extra), cwd=recipe, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def params(path: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in paddle.load(str(path)).items()}


def test_two_processes_equal_one_process_on_the_same_global_batch(tiny_recipe):
    """2 CPU processes with 4 utterances each == 1 process with 8: the same global batches, in the
    same order, gradients averaged across processes."""
    one = write_config(tiny_recipe, "dp_one", batch_size=8)
    two = write_config(tiny_recipe, "dp_two", batch_size=4)
    run_train(tiny_recipe, one, "exp/dp_one")
    out = run_train(tiny_recipe, two, "exp/dp_two", "--nproc", "2")
    assert "data-parallel training" in out
    summary = json.loads((tiny_recipe / "exp/dp_two/train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3  # 24 utterances / 8 per global batch
    a = params(tiny_recipe / "exp/dp_one/checkpoints/1.pdparams")
    b = params(tiny_recipe / "exp/dp_two/checkpoints/1.pdparams")
    assert a.keys() == b.keys()
    # An attention key bias adds the same amount to all scores of a query, which softmax ignores:
    # its true gradient is 0, and Adam turns the float noise there into steps of +-lr. Every
    # parameter with a real gradient must match.
    # The bound leaves room for float sums taken in another order (1.2e-5 measured on an AVX2 CPU,
    # under 1e-5 on AVX-512); a different global batch moves parameters by Adam steps of ~1e-4.
    worst = max((float(np.abs(a[k] - b[k]).max()), k) for k in a if not k.endswith("linear_k.bias"))
    assert worst[0] < 3e-5, worst
    # One process with 4 utterances per batch takes other steps: the comparison above can fail.
    run_train(tiny_recipe, two, "exp/dp_two_single")
    c = params(tiny_recipe / "exp/dp_two_single/checkpoints/1.pdparams")
    assert max(float(np.abs(c[k] - b[k]).max()) for k in c) > 1e-3


def _checkpoints_load(ckpt_dir: Path) -> None:
    """Every checkpoint that has a record loads in full; nothing else counts."""
    for record in ckpt_dir.glob("*.json"):
        if record.stem.isdigit() or record.stem.startswith("step_"):
            for suffix in STATE_SUFFIXES[:2]:
                paddle.load(str(record.with_suffix(suffix)))


def test_sigkill_at_three_points_resumes_to_the_same_parameters(tiny_recipe):
    config = write_config(tiny_recipe, "resume", max_epoch=2, batch_size=4, checkpoint_interval=1)
    reference = run_train(tiny_recipe, config, "exp/resume_reference")
    total = json.loads((tiny_recipe / "exp/resume_reference/train_summary.json").read_text())["steps"]
    assert total == 12 and "resumed" not in reference
    kill_points = sorted(random.Random(7).sample(range(2, total), 3))
    exp = "exp/resume_killed"
    for point in kill_points:
        proc = subprocess.Popen(train_cmd(config, exp), cwd=tiny_recipe, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if f" step {point} " in line:
                os.kill(proc.pid, signal.SIGKILL)  # mid-save or mid-step: whatever it was doing
                break
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"the run ended before step {point}"
        _checkpoints_load(tiny_recipe / exp / "checkpoints")
        assert not (tiny_recipe / exp / ".done").exists()
    out = run_train(tiny_recipe, config, exp)
    assert "resuming the unfinished run" in out and "resumed from" in out
    ref_dir, got_dir = tiny_recipe / "exp/resume_reference/checkpoints", tiny_recipe / exp / "checkpoints"
    for epoch in (1, 2):
        a, b = params(ref_dir / f"{epoch}.pdparams"), params(got_dir / f"{epoch}.pdparams")
        assert all(np.array_equal(a[k], b[k]) for k in a), f"epoch {epoch} parameters differ"
    ref_records, got_records = list_checkpoints(ref_dir), list_checkpoints(got_dir)
    assert [(r["epoch"], r["step"], r["dev_loss"], r["lr"]) for r in ref_records] == \
           [(r["epoch"], r["step"], r["dev_loss"], r["lr"]) for r in got_records]
    assert not list(got_dir.glob("step_*.json")) or len(list(got_dir.glob("step_*.json"))) == 1
    assert not list(got_dir.glob(".*.tmp"))
    # A complete run is reused, not resumed or retrained.
    assert "reusing the complete run" in run_train(tiny_recipe, config, exp)


def _kill_at_step(recipe: Path, config: str, exp: str, point: int) -> None:
    proc = subprocess.Popen(train_cmd(config, exp), cwd=recipe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
        if f" step {point} " in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before step {point}"


def test_cached_features_train_and_resume_to_the_same_parameters(tiny_recipe):
    """training.cache_features: a run killed in its second epoch resumes with an empty cache and
    ends with the parameters of the run that kept its cache (the features do not depend on it)."""
    config = write_config(tiny_recipe, "cached", max_epoch=2, checkpoint_interval=1,
                          training="  cache_features: true\n")
    reference = run_train(tiny_recipe, config, "exp/cached_reference")
    assert "keeping the fbank of the 23 training utterances in memory from their first epoch on" in reference
    _kill_at_step(tiny_recipe, config, "exp/cached_killed", 9)
    assert "resumed from" in run_train(tiny_recipe, config, "exp/cached_killed")
    a = params(tiny_recipe / "exp/cached_reference/checkpoints/2.pdparams")
    b = params(tiny_recipe / "exp/cached_killed/checkpoints/2.pdparams")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # The kept dev batches (epoch 2 of the reference) score as those computed anew after the resume.
    ref, got = (list_checkpoints(tiny_recipe / f"exp/cached_{run}/checkpoints") for run in ("reference", "killed"))
    assert [(r["epoch"], r["dev_loss"]) for r in ref] == [(r["epoch"], r["dev_loss"]) for r in got]
    # The cache changes what training sees (dither drawn once), so it is another run, not a resume.
    plain = write_config(tiny_recipe, "plain", max_epoch=2, checkpoint_interval=1)
    run_train(tiny_recipe, plain, "exp/plain")
    c = params(tiny_recipe / "exp/plain/checkpoints/2.pdparams")
    assert max(float(np.abs(a[k] - c[k]).max()) for k in a) > 1e-4


def test_too_few_checkpoints_to_average_is_a_clear_error(tiny_recipe):
    config = write_config(tiny_recipe, "avg", max_epoch=1)
    run_train(tiny_recipe, config, "exp/avg")
    proc = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "average", "--exp_dir", "exp/avg", "--num", "3"],
                          cwd=tiny_recipe, capture_output=True, text=True)
    assert proc.returncode == 1 and "fewer than the 3 to average" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "average", "--exp_dir", "exp/avg", "--num", "1",
                           "--mode", "last"], cwd=tiny_recipe, capture_output=True, text=True)
    assert proc.returncode == 0
    provenance = json.loads((tiny_recipe / "exp/avg/checkpoints/avg_last_1.json").read_text())
    assert provenance["mode"] == "last" and [r["epoch"] for r in provenance["averaged"]] == [1]


def test_mixed_precision_is_refused_on_cpu_with_a_clear_error(tiny_recipe):
    config = write_config(tiny_recipe, "amp")
    path = tiny_recipe / config
    path.write_text(path.read_text().replace("  num_threads: 1\n", "  num_threads: 1\n  amp: fp16\n"))
    proc = subprocess.run(train_cmd(config, "exp/amp"), cwd=tiny_recipe, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "training.amp: fp16 runs on GPUs only" in proc.stderr
    assert "Traceback" not in proc.stderr
    path.write_text(path.read_text().replace("amp: fp16", "amp: fp8"))
    proc = subprocess.run(train_cmd(config, "exp/amp"), cwd=tiny_recipe, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "training.amp: 'fp8' is not one of 'off', 'fp16', 'bf16'" in proc.stderr


def test_sharded_data_trains_data_parallel_and_resumes_exactly(tiny_recipe):
    """Tar shards read sequentially: two processes (whose shards hold different numbers of
    utterances) stop each epoch together, and a killed one-process run resumes to the same parameters."""
    from paddle_asr.data.manifest import read_manifest
    from paddle_asr.data.shards import write_shards

    write_shards(read_manifest(tiny_recipe / "data/train/data.list"), tiny_recipe / "data/train/shards", per_shard=5,
                 log=lambda *_: None)
    config = write_config(tiny_recipe, "shards", max_epoch=2, batch_size=2, checkpoint_interval=1)
    path = tiny_recipe / config
    path.write_text(path.read_text() + "data:\n  train_shards: data/train/shards/shards.list\n  shuffle_buffer: 6\n"
                    "  sort_buffer: 3\n")
    assert "data-parallel training" in run_train(tiny_recipe, config, "exp/shards_dp", "--nproc", "2")
    log = (tiny_recipe / "exp/shards_dp/launch/workerlog.0").read_text()
    assert "reading 5 shards" in log and "epoch 2/2" in log
    records = list_checkpoints(tiny_recipe / "exp/shards_dp/checkpoints")
    assert [r["epoch"] for r in records] == [1, 2] and all(np.isfinite(r["dev_loss"]) for r in records)

    reference = run_train(tiny_recipe, config, "exp/shards_reference")
    total = json.loads((tiny_recipe / "exp/shards_reference/train_summary.json").read_text())["steps"]
    proc = subprocess.Popen(train_cmd(config, "exp/shards_killed"), cwd=tiny_recipe, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if f" step {total // 2 + 1} " in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL and "reading 5 shards" in reference
    assert "resumed from" in run_train(tiny_recipe, config, "exp/shards_killed")
    a = params(tiny_recipe / "exp/shards_reference/checkpoints/2.pdparams")
    b = params(tiny_recipe / "exp/shards_killed/checkpoints/2.pdparams")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_ctc_only_updates_train_the_encoder_and_leave_the_decoder_as_initialised(tiny_recipe):
    """training.ctc_only_updates: the decoder is not run, so not even the weight decay moves it (a zero
    loss weight would let Adam turn that decay into full-size steps); it trains once they are over."""
    from paddle_asr.config import load_config
    from paddle_asr.models.registry import build_model_for_training
    from paddle_asr.train.trainer import seed_everything

    config = write_config(tiny_recipe, "ctc_only", max_epoch=2, batch_size=4)
    path = tiny_recipe / config
    path.write_text(path.read_text() + "  ctc_only_updates: 6\n")  # epoch 1's 6 updates
    out = run_train(tiny_recipe, config, "exp/ctc_only")
    assert " step 6 " in out and " step 7 " in out
    assert "att" not in next(line for line in out.splitlines() if " step 6 " in line)
    assert "att" in next(line for line in out.splitlines() if " step 7 " in line)
    resolved = load_config(tiny_recipe / "exp/ctc_only/train.yaml")
    seed_everything(resolved.training.seed)  # as training does before building the model
    initial = {k: v.numpy() for k, v in build_model_for_training(resolved, tiny_recipe).state_dict().items()}
    epoch1 = params(tiny_recipe / "exp/ctc_only/checkpoints/1.pdparams")
    epoch2 = params(tiny_recipe / "exp/ctc_only/checkpoints/2.pdparams")
    decoder = [k for k in initial if k.startswith("decoder.")]
    assert decoder and all(np.array_equal(initial[k], epoch1[k]) for k in decoder)
    assert not np.array_equal(initial["ctc.ctc_lo.weight"], epoch1["ctc.ctc_lo.weight"])
    assert not np.array_equal(epoch1["decoder.output_layer.weight"], epoch2["decoder.output_layer.weight"])


def test_warmup_cosine_decays_to_its_floor_at_the_runs_last_update(tiny_recipe):
    """scheduler warmup_cosine: the trainer counts the run's updates from the batch plan (max_epoch x
    the batches of an epoch), so the logged lr follows the cosine and the last update trains at eta_min."""
    config = write_config(tiny_recipe, "cosine", max_epoch=2, batch_size=4)
    path = tiny_recipe / config
    path.write_text(path.read_text().replace("  warmup_steps: 20\n", "  name: warmup_cosine\n  warmup_steps: 2\n"
                                             "  eta_min: 0.0001\n"))
    out = run_train(tiny_recipe, config, "exp/cosine")
    per_epoch = int(re.search(r"(\d+) batches per epoch", out).group(1))
    total = 2 * per_epoch
    logged = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r" step (\d+) loss .* lr (\S+) ", out)}
    assert sorted(logged) == list(range(1, total + 1))
    base = 0.002  # the AISHELL config's optim.lr, which the tiny config keeps
    for n, lr in logged.items():
        want = base * n / 2 if n <= 2 else 1e-4 + (base - 1e-4) * (1 + math.cos(math.pi * (n - 2) / (total - 2))) / 2
        assert lr == pytest.approx(want, rel=6e-3), f"update {n}"
    assert logged[total] == pytest.approx(1e-4, rel=1e-6)


def _dev_batches(config, tokenizer) -> list:
    """Two padded batches (2 and 3 utterances) cut from the real AISHELL fixture, random labels."""
    from paddle_asr.data.audio import read_audio
    from paddle_asr.data.dataset import Batch
    from paddle_asr.features import compute_fbank
    from tests.conftest import real_fixture

    fbank = compute_fbank(read_audio(real_fixture("aishell-BAC009S0724W0121.wav"))[0], config.features)
    rng = np.random.default_rng(0)
    batches = []
    for b, cut in enumerate([(1.0, 0.6), (0.8, 0.5, 0.3)]):
        lengths = np.array([int(len(fbank) * c) for c in cut])
        feats = np.zeros((len(cut), lengths.max(), fbank.shape[1]), np.float32)
        for i, n in enumerate(lengths):
            feats[i, :n] = fbank[:n]
        label_lengths = np.array([5, 3, 2][:len(cut)])
        labels = np.full((len(cut), 5), -1, np.int32)
        for i, n in enumerate(label_lengths):
            labels[i, :n] = rng.integers(2, 39, n)
        texts = ["".join(tokenizer.units[t] for t in row[:n]) for row, n in zip(labels, label_lengths)]
        batches.append(Batch([f"u{b}_{i}" for i in range(len(cut))], feats, lengths.astype(np.int64), labels,
                             label_lengths.astype(np.int64), texts))
    return batches


@pytest.mark.parametrize("recipe_config", ["recipes/demo/conf/conformer.yaml", "recipes/demo/conf/deepspeech2.yaml"])
def test_dev_evaluation_runs_the_encoder_once_a_batch_and_reports_the_training_losses(recipe_config):
    """The dev pass reads its CTC hypotheses and its losses off one encoder run per batch, and the
    losses are exactly those of the model's training forward in eval mode."""
    import dataclasses

    from paddle_asr.config import load_config
    from paddle_asr.data.tokenizer import CharTokenizer
    from paddle_asr.decode.search import ctc_greedy_search
    from paddle_asr.metrics.score import score
    from paddle_asr.models.registry import build_model
    from paddle_asr.train.trainer import evaluate_dev

    config = load_config(REPO / recipe_config)
    config = dataclasses.replace(config, vocab_size=40, input_dim=config.features.num_mel_bins)
    paddle.seed(0)
    model = build_model(config)
    model.eval()
    tokenizer = CharTokenizer(["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(37)] + ["<eos>"])
    batches = _dev_batches(config, tokenizer)
    runs = []
    hook = model.encoder.register_forward_pre_hook(lambda layer, inputs: runs.append(1))
    result, _ = evaluate_dev(model, batches, tokenizer, config)
    hook.remove()
    assert len(runs) == len(batches)
    model.eval()  # evaluate_dev hands the model back in training mode

    totals: dict[str, float] = {}
    refs, hyps = {}, {}
    with paddle.no_grad():
        for b in batches:
            feats, lengths = paddle.to_tensor(b.feats), paddle.to_tensor(b.feat_lengths)
            loss, parts = model(feats, lengths, paddle.to_tensor(b.labels), paddle.to_tensor(b.label_lengths))
            for k, v in {"loss": loss, **parts}.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(b.keys)
            _, enc_lengths, log_probs = model.forward_encoder(feats, lengths)
            for key, text, ids in zip(b.keys, b.texts, ctc_greedy_search(log_probs.numpy(), enc_lengths.numpy())):
                refs[key], hyps[key] = text, tokenizer.decode(ids)
    assert set(result) == set(totals) | {"error_rate"}
    for k, v in totals.items():
        assert result[k] == v / 5, k
    assert result["error_rate"] == score(refs, hyps, verbose=0).overall.rate
