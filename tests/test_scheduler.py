"""Learning-rate schedules: hand-checked values, per-epoch/per-update stepping, exact resume, validation."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
from paddle.optimizer.lr import LRScheduler

from paddle_asr.config import OptimConfig, SchedulerConfig
from paddle_asr.errors import AsrError
from paddle_asr.train.scheduler import (
    CosineWarmRestartsLR,
    ExponentialDecayLR,
    WarmupCosineLR,
    WarmupLR,
    build_scheduler,
)


def lrs_after_steps(sched: LRScheduler, n: int) -> list[float]:
    """The lr in force for each of the next n updates/epochs: read, then step (as the trainer does)."""
    out = []
    for _ in range(n):
        out.append(sched())
        sched.step()
    return out


def build(name: str, lr: float = 0.002, total_steps: int | None = 100, **kw) -> LRScheduler:
    return build_scheduler(OptimConfig(lr=lr), SchedulerConfig(name=name, **kw), total_steps)


# ---------------------------------------------------------------- values


def test_warmuplr_hand_values():
    # base 0.002, warmup W = 25000; lr(s) = base * W^0.5 * min(s^-0.5, s * W^-1.5), s counted from 1.
    # s = 1:      min(1, W^-1.5) = W^-1.5        -> 0.002 * W^0.5 * W^-1.5 = 0.002 / W = 8e-8
    # s = W:      s^-0.5 = s*W^-1.5 = W^-0.5     -> 0.002 * W^0.5 * W^-0.5 = 0.002 (the peak is base itself)
    # s = 4W:     s^-0.5 = (4W)^-0.5 = W^-0.5 / 2 -> 0.002 / 2 = 0.001
    # s = W - 1:  still warming up: 0.002 * (W - 1) / W = 0.00199992
    s = build("warmuplr", warmup_steps=25000)
    assert isinstance(s, WarmupLR) and s.per_epoch is False
    assert s.last_epoch == 0  # paddle's constructor already stepped once: s = last_epoch + 1 = 1
    assert s() == pytest.approx(8e-8, rel=1e-12)
    for _ in range(25000 - 2):
        s.step()
    assert s() == pytest.approx(0.00199992, rel=1e-12)  # update 24999
    s.step()
    assert s() == pytest.approx(0.002, rel=1e-12)  # update 25000: the peak
    s.step()
    assert s() < 0.002  # decaying from here
    for _ in range(4 * 25000 - 25001):
        s.step()
    assert s.last_epoch + 1 == 100000
    assert s() == pytest.approx(0.001, rel=1e-12)  # update 4W


def test_exponential_decay_per_epoch():
    # DeepSpeech2 style: base 5e-4, gamma 0.83, one step per epoch.
    # epoch 0: 5e-4; 1: 5e-4 * 0.83 = 4.15e-4; 2: 4.15e-4 * 0.83 = 3.4445e-4; 3: 3.4445e-4 * 0.83 = 2.858935e-4
    s = build("exponential", lr=5e-4, gamma=0.83)
    assert isinstance(s, ExponentialDecayLR) and s.per_epoch is True
    assert lrs_after_steps(s, 4) == pytest.approx([5e-4, 4.15e-4, 3.4445e-4, 2.858935e-4], rel=1e-12)
    # gamma = 1 is allowed: a constant lr
    assert lrs_after_steps(build("exponential", lr=5e-4, gamma=1.0), 3) == [5e-4] * 3


def test_cosine_values_within_one_period():
    # base 0.01, eta_min 0.001, T = 10: lr(t) = 0.001 + 0.009 * (1 + cos(pi t / 10)) / 2
    # t = 0: 0.001 + 0.009 = 0.01
    # t = 5: cos(pi/2) = 0 -> 0.001 + 0.0045 = 0.0055
    # t = 9: cos(0.9 pi) = -0.951056516295 -> 0.001 + 0.009 * 0.048943483705 / 2 = 0.00122024567667
    # t = 10: restart -> 0.01
    s = build("cosine_warm_restarts", lr=0.01, t_0=10, t_mult=1, eta_min=0.001)
    assert isinstance(s, CosineWarmRestartsLR) and s.per_epoch is False
    seq = lrs_after_steps(s, 21)
    assert seq[0] == pytest.approx(0.01, rel=1e-12)
    assert seq[5] == pytest.approx(0.0055, rel=1e-12)
    assert seq[9] == pytest.approx(0.00122024567667, rel=1e-11)
    assert seq[10] == pytest.approx(0.01, rel=1e-12)
    assert seq[10:20] == seq[0:10]  # t_mult = 1: identical periods
    assert seq[20] == seq[0]
    assert all(a > b for a, b in zip(seq[0:9], seq[1:10]))  # strictly decreasing within the period


def test_cosine_period_growth_with_t_mult_2_and_eta_min_floor():
    # t_0 = 4, t_mult = 2: periods 4, 8, 16 -> restarts at updates 0, 4, 12, 28.
    s = build("cosine_warm_restarts", lr=0.01, t_0=4, t_mult=2, eta_min=0.002)
    seq = lrs_after_steps(s, 29)
    restarts = [i for i, v in enumerate(seq) if v == pytest.approx(0.01, rel=1e-12)]
    assert restarts == [0, 4, 12, 28]
    # midpoints: t_cur = T_i / 2 -> (0.01 + 0.002) / 2 = 0.006 at updates 2, 4 + 4 = 8, 12 + 8 = 20
    for i in (2, 8, 20):
        assert seq[i] == pytest.approx(0.006, rel=1e-12)
    # last update of the 8-long period (t_cur = 7): 0.002 + 0.008 * (1 + cos(7 pi / 8)) / 2
    #   cos(7pi/8) = -0.92387953251 -> 0.002 + 0.008 * 0.03806023374 = 0.00230448187
    assert seq[11] == pytest.approx(0.00230448187, rel=1e-9)
    # the floor: never below eta_min, never reaching it (t_cur < T_i), closest at the ends of periods
    assert min(seq) > 0.002
    assert min(seq) == seq[27]
    # position is derived from last_epoch
    s2 = build("cosine_warm_restarts", lr=0.01, t_0=4, t_mult=2)
    positions = []
    for _ in range(29):
        positions.append((s2.t_cur, s2.t_i))
        s2.step()
    assert positions[:5] == [(0, 4), (1, 4), (2, 4), (3, 4), (0, 8)]
    assert positions[11:13] == [(7, 8), (0, 16)] and positions[28] == (0, 32)


def test_cosine_eta_min_zero_and_large_step_counts():
    # eta_min 0 reaches (nearly) zero at the end of a period; step(epoch=...) jumps straight there
    s = build("cosine_warm_restarts", lr=0.002, t_0=1000, t_mult=2)
    s.step(epoch=1000 + 2000 + 4000 - 1)  # last update of the third period (T = 4000)
    assert s.t_cur == 3999 and s.t_i == 4000
    assert s() == pytest.approx(0.002 * (1 + math.cos(math.pi * 3999 / 4000)) / 2, rel=1e-12)
    s.step()
    assert (s.t_cur, s.t_i, s()) == (0, 8000, 0.002)


def test_warmup_cosine_hand_values():
    # base 0.002, warmup W = 4, T = 12 updates in all, floor 2e-4; update s (from 1):
    # s <= 4: 0.002 * s / 4 -> 5e-4, 1e-3, 1.5e-3, 2e-3
    # s > 4: 2e-4 + 1.8e-3 * (1 + cos(pi * (s - 4) / 8)) / 2; s = 8 (half way) -> 2e-4 + 9e-4 = 1.1e-3;
    # s = 12 -> the floor 2e-4, and it stays there after the run's last update.
    s = build("warmup_cosine", total_steps=12, warmup_steps=4, eta_min=2e-4)
    assert isinstance(s, WarmupCosineLR) and s.per_epoch is False
    lrs = lrs_after_steps(s, 14)
    assert lrs[:4] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3], rel=1e-12)
    assert lrs[7] == pytest.approx(1.1e-3, rel=1e-12)
    assert lrs[4] == pytest.approx(2e-4 + 1.8e-3 * (1 + math.cos(math.pi / 8)) / 2, rel=1e-12)
    assert lrs[11:] == pytest.approx([2e-4] * 3, rel=1e-12)
    assert all(a > b for a, b in zip(lrs[3:11], lrs[4:12]))  # falls every update after the peak


def test_warmup_cosine_needs_the_runs_length():
    with pytest.raises(AsrError, match="unknown when training reads shards"):
        build("warmup_cosine", total_steps=None, warmup_steps=4)
    with pytest.raises(AsrError, match=r"warmup_steps \(300\) must be .* below the run's 200 updates"):
        build("warmup_cosine", total_steps=200, warmup_steps=300)


def test_default_config_builds_warmuplr():
    assert isinstance(build_scheduler(OptimConfig(), SchedulerConfig()), WarmupLR)


# ---------------------------------------------------------------- exact resume


RESUME_CASES = [
    ("warmuplr", dict(warmup_steps=7), 40, (1, 6, 7, 8, 25)),
    ("warmup_cosine", dict(warmup_steps=7, eta_min=1e-4), 40, (1, 6, 7, 8, 25, 39)),
    ("exponential", dict(gamma=0.83), 15, (1, 3, 10)),
    ("cosine_warm_restarts", dict(t_0=4, t_mult=1, eta_min=1e-4), 30, (1, 3, 4, 5, 17)),
    ("cosine_warm_restarts", dict(t_0=3, t_mult=2, eta_min=0.0), 50, (2, 3, 4, 8, 9, 10, 20, 21, 22, 45)),
]


@pytest.mark.parametrize("name,kw,n,ks", RESUME_CASES)
def test_resume_from_state_dict_is_exact(name, kw, n, ks, tmp_path):
    reference = lrs_after_steps(build(name, **kw), n)
    for k in ks:
        first = build(name, **kw)
        before = lrs_after_steps(first, k)
        path = tmp_path / f"{name}_{k}.pdparams"
        paddle.save(first.state_dict(), str(path))  # through a file, as a checkpoint would
        state = paddle.load(str(path))
        assert state["last_epoch"] == k
        resumed = build(name, **kw)
        resumed.set_state_dict(state)
        assert resumed.last_epoch == first.last_epoch and resumed() == first()
        after = lrs_after_steps(resumed, n - k)
        assert before + after == reference, f"{name} resumed after {k} steps diverges"


def _tiny_model_and_adam(sched: LRScheduler) -> tuple[paddle.nn.Layer, paddle.optimizer.Optimizer]:
    paddle.seed(0)
    model = paddle.nn.Linear(3, 2)
    return model, paddle.optimizer.Adam(learning_rate=sched, parameters=model.parameters())


def _train(model, opt, sched, batches) -> list[float]:
    seen = []
    for x in batches:
        seen.append(opt.get_lr())
        loss = (model(paddle.to_tensor(x)) ** 2).mean()
        loss.backward()
        opt.step()
        opt.clear_grad()
        sched.step()
    return seen


@pytest.mark.parametrize("name,kw", [
    ("warmuplr", dict(warmup_steps=5)),
    ("warmup_cosine", dict(warmup_steps=5)),
    ("cosine_warm_restarts", dict(t_0=3, t_mult=2, eta_min=1e-4)),
])
def test_resume_through_adam_state_dict(name, kw, tmp_path):
    # Paddle 3.0 stores the scheduler state in optimizer.state_dict()["LR_Scheduler"] and
    # optimizer.set_state_dict() restores it: loading the .pdopt restores the schedule position.
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 3)).astype("float32") for _ in range(16)]
    k = 7

    # Each run gets a fresh unique-name generator, as a new process would: Paddle keys the optimizer
    # state by parameter and accumulator names (linear_0.w_0_moment1_0, ...).
    with paddle.utils.unique_name.guard():  # uninterrupted
        sched_a = build(name, lr=0.01, **kw)
        model_a, opt_a = _tiny_model_and_adam(sched_a)
        lrs_a = _train(model_a, opt_a, sched_a, batches)

    with paddle.utils.unique_name.guard():  # k updates, then a checkpoint
        sched_b = build(name, lr=0.01, **kw)
        model_b, opt_b = _tiny_model_and_adam(sched_b)
        lrs_b = _train(model_b, opt_b, sched_b, batches[:k])
        opt_state = opt_b.state_dict()
        assert opt_state["LR_Scheduler"] == {"last_epoch": k, "last_lr": sched_b()}
        paddle.save(model_b.state_dict(), str(tmp_path / "m.pdparams"))
        paddle.save(opt_state, str(tmp_path / "m.pdopt"))

    with paddle.utils.unique_name.guard():  # resumed from the checkpoint files
        sched_c = build(name, lr=0.01, **kw)  # fresh: last_epoch 0
        model_c, opt_c = _tiny_model_and_adam(sched_c)
        model_c.set_state_dict(paddle.load(str(tmp_path / "m.pdparams")))
        opt_c.set_state_dict(paddle.load(str(tmp_path / "m.pdopt")))
        assert sched_c.last_epoch == k and opt_c.get_lr() == sched_b()  # the optimizer restored the scheduler
        lrs_c = _train(model_c, opt_c, sched_c, batches[k:])

    assert lrs_b + lrs_c == lrs_a
    for pa, pc in zip(model_a.parameters(), model_c.parameters()):
        np.testing.assert_array_equal(pa.numpy(), pc.numpy())


def test_exponential_resume_through_adam_state_dict_per_epoch():
    sched = build("exponential", lr=5e-4, gamma=0.83)
    _, opt = _tiny_model_and_adam(sched)
    for _ in range(3):  # three epochs done
        sched.step()
    state = opt.state_dict()
    assert state["LR_Scheduler"]["last_epoch"] == 3
    sched2 = build("exponential", lr=5e-4, gamma=0.83)
    _, opt2 = _tiny_model_and_adam(sched2)
    opt2.set_state_dict(state)
    assert opt2.get_lr() == pytest.approx(5e-4 * 0.83**3, rel=1e-12) and opt2.get_lr() == opt.get_lr()


# ---------------------------------------------------------------- validation


COSINE = "cosine_warm_restarts"


@pytest.mark.parametrize("lr,name,kw,match", [
    (0.002, "noam", {}, r"scheduler.name: 'noam' is not one of 'warmuplr', 'warmup_cosine', 'exponential', "
     r"'cosine_warm_restarts'"),
    (0.002, "warmuplr", dict(warmup_steps=0), r"scheduler.warmup_steps is 0; set it to a positive"),
    (0.002, "warmup_cosine", dict(warmup_steps=0), r"scheduler.warmup_steps is 0; set it to a positive"),
    (0.002, "warmup_cosine", dict(eta_min=0.003), r"scheduler.eta_min is 0.003.*below optim.lr \(0.002\)"),
    (0.002, "exponential", dict(gamma=0.0), r"scheduler.gamma is 0.0; set it in \(0, 1\]"),
    (0.002, "exponential", dict(gamma=1.5), r"scheduler.gamma is 1.5"),
    (0.002, "exponential", dict(gamma=float("nan")), r"scheduler.gamma is nan"),
    (0.002, COSINE, dict(t_0=0), r"scheduler.t_0 is 0; set it to"),
    (0.002, COSINE, dict(t_mult=0), r"scheduler.t_mult is 0; set it to an integer >= 1"),
    (0.002, COSINE, dict(eta_min=-1e-5), r"scheduler.eta_min is -1e-05; set it .* >= 0"),
    (0.002, COSINE, dict(eta_min=0.002), r"scheduler.eta_min is 0.002.*below optim.lr \(0.002\)"),
    (0.0, "warmuplr", {}, r"optim.lr is 0.0; set it to a positive"),
    (-1.0, "exponential", {}, r"optim.lr is -1.0"),
])
def test_validation_errors_name_the_field(lr, name, kw, match):
    with pytest.raises(AsrError, match=match):
        build(name, lr=lr, **kw)


def test_only_the_chosen_schedulers_fields_are_validated():
    # an unused field does not block training with another scheduler
    assert isinstance(build("warmuplr", t_0=0, gamma=2.0), WarmupLR)
    assert isinstance(build("exponential", warmup_steps=0, eta_min=1.0), ExponentialDecayLR)
