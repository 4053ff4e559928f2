"""Export -> Paddle Inference parity -> PaddleSlim PTQ -> oneDNN INT8, end to end.

Uses a stand-in Conformer-CTC of the real model's shape (conv2d subsampling,
rel-pos self-attention with paddle.matmul, masks from lengths, swish FFNs,
depthwise conv + BatchNorm, LayerNorm, Linear + log_softmax), small enough to
keep the whole file well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from paddle_asr.export.export import export_inference_model
from paddle_asr.export.inference import InferenceModel, find_model_files
from paddle_asr.export.quantize import quantize_ptq

FEAT_DIM = 80


class _RelPosAttention(nn.Layer):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.pos = nn.Linear(d, d, bias_attr=False)
        self.bias_u = self.create_parameter([heads, self.dk], default_initializer=nn.initializer.XavierUniform())
        self.bias_v = self.create_parameter([heads, self.dk], default_initializer=nn.initializer.XavierUniform())

    def _split(self, x):  # [B,T,D] -> [B,T,H,dk]
        return x.reshape([0, 0, self.h, self.dk])

    def forward(self, x, pos_emb, mask):  # mask [B,1,T] bool
        q = self._split(self.q(x))
        k = self._split(self.k(x)).transpose([0, 2, 1, 3])
        v = self._split(self.v(x)).transpose([0, 2, 1, 3])
        p = self._split(self.pos(pos_emb)).transpose([0, 2, 1, 3])
        qu = (q + self.bias_u).transpose([0, 2, 1, 3])
        qv = (q + self.bias_v).transpose([0, 2, 1, 3])
        scores = (paddle.matmul(qu, k, transpose_y=True) + paddle.matmul(qv, p, transpose_y=True)) / math.sqrt(self.dk)
        m = mask.unsqueeze(1)  # [B,1,1,T]
        scores = paddle.where(m, scores, paddle.full_like(scores, -1e4))
        attn = F.softmax(scores, axis=-1) * m.astype(scores.dtype)
        ctx = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([0, 0, self.h * self.dk])
        return self.o(ctx)


class _ConvModule(nn.Layer):
    def __init__(self, d: int, kernel: int = 15) -> None:
        super().__init__()
        self.pw1 = nn.Conv1D(d, 2 * d, 1)
        self.dw = nn.Conv1D(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1D(d)
        self.pw2 = nn.Conv1D(d, d, 1)

    def forward(self, x, mask):  # x [B,T,D]
        x = x * mask.transpose([0, 2, 1]).astype(x.dtype)
        x = F.glu(self.pw1(x.transpose([0, 2, 1])), axis=1)
        x = F.swish(self.bn(self.dw(x)))
        return self.pw2(x).transpose([0, 2, 1])


class _Block(nn.Layer):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ff1 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Swish(), nn.Linear(4 * d, d))
        self.ln_att, self.att = nn.LayerNorm(d), _RelPosAttention(d, heads)
        self.ln_conv, self.conv = nn.LayerNorm(d), _ConvModule(d)
        self.ff2 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Swish(), nn.Linear(4 * d, d))
        self.ln_out = nn.LayerNorm(d)

    def forward(self, x, pos_emb, mask):
        x = x + 0.5 * self.ff1(x)
        x = x + self.att(self.ln_att(x), pos_emb, mask)
        x = x + self.conv(self.ln_conv(x), mask)
        x = x + 0.5 * self.ff2(x)
        return self.ln_out(x)


class StandInConformer(nn.Layer):
    """Conformer-CTC of the project's model contract (``forward_infer``)."""

    def __init__(self, feat_dim: int = FEAT_DIM, d: int = 144, heads: int = 4, blocks: int = 4, vocab: int = 300) -> None:
        super().__init__()
        self.d = d
        self.register_buffer("cmvn_mean", paddle.to_tensor(np.linspace(-1, 1, feat_dim).astype("float32")))
        self.register_buffer("cmvn_istd", paddle.to_tensor(np.linspace(0.5, 1.5, feat_dim).astype("float32")))
        self.conv1, self.conv2 = nn.Conv2D(1, d, 3, 2), nn.Conv2D(d, d, 3, 2)
        self.sub_out = nn.Linear(d * (((feat_dim - 1) // 2 - 1) // 2), d)
        self.blocks = nn.LayerList([_Block(d, heads) for _ in range(blocks)])
        self.ctc = nn.Linear(d, vocab)

    def _pos_emb(self, t):
        pos = paddle.arange(0, t, dtype="float32").unsqueeze(1)
        div = paddle.exp(paddle.arange(0, self.d, 2, dtype="float32") * (-math.log(10000.0) / self.d))
        ang = pos * div
        return paddle.stack([paddle.sin(ang), paddle.cos(ang)], axis=-1).reshape([1, -1, self.d])

    def forward_infer(self, feats, feats_lengths):
        x = (feats - self.cmvn_mean) * self.cmvn_istd
        x = F.relu(self.conv2(F.relu(self.conv1(x.unsqueeze(1)))))  # [B,C,T',F']
        b, c, t, f = x.shape
        x = self.sub_out(x.transpose([0, 2, 1, 3]).reshape([0, 0, c * f])) * math.sqrt(self.d)
        lengths = ((feats_lengths - 1) // 2 - 1) // 2
        mask = (paddle.arange(0, t, dtype="int64").unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1)
        pos_emb = self._pos_emb(t)
        for blk in self.blocks:
            x = blk(x, pos_emb, mask)
        return F.log_softmax(self.ctc(x), axis=-1), lengths


def build_stand_in(seed: int = 0, **kw) -> StandInConformer:
    paddle.seed(seed)
    model = StandInConformer(**kw)
    # Non-trivial BatchNorm statistics, as after training.
    for layer in model.sublayers():
        if isinstance(layer, nn.BatchNorm1D):
            layer._mean.set_value(paddle.uniform(layer._mean.shape, min=-0.1, max=0.1))
            layer._variance.set_value(paddle.uniform(layer._variance.shape, min=0.5, max=1.5))
    model.eval()
    return model


def random_batch(rng: np.random.Generator, lengths) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray(lengths, dtype=np.int64)
    feats = rng.standard_normal((len(lengths), int(lengths.max()), FEAT_DIM)).astype(np.float32)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    return feats, lengths


def greedy_agreement(a: np.ndarray, b: np.ndarray, lengths: np.ndarray) -> float:
    same = total = 0
    for i, n in enumerate(lengths):
        same += int((a[i, :n].argmax(-1) == b[i, :n].argmax(-1)).sum())
        total += int(n)
    return same / max(total, 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = build_stand_in()
    out = export_inference_model(model, FEAT_DIM, tmp_path_factory.mktemp("exp") / "fp32")
    return model, out


def test_export_files_and_parity(exported):
    model, out = exported
    assert (out / "model.pdmodel").is_file() and (out / "model.pdiparams").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"
    rng = np.random.default_rng(1)
    for use_mkldnn in (False, True):
        pred = InferenceModel(out, use_mkldnn=use_mkldnn)
        for lengths in ([120], [211, 64, 150]):
            feats, lens = random_batch(rng, lengths)
            with paddle.no_grad():
                ref_lp, ref_len = model.forward_infer(paddle.to_tensor(feats), paddle.to_tensor(lens))
            lp, ol = pred.run(feats, lens)
            np.testing.assert_array_equal(ol, ref_len.numpy())
            # time is padded to the runner's length bucket; frames past each length are padding
            assert lp.shape[0::2] == tuple(ref_lp.shape)[0::2] and lp.shape[1] >= ref_lp.shape[1]
            for i, n in enumerate(ol):
                np.testing.assert_allclose(lp[i, :n], ref_lp.numpy()[i, :n], atol=1e-3, rtol=0)


def test_missing_model_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        find_model_files(tmp_path)


def test_quantize_int8(exported, tmp_path):
    _, fp32_dir = exported
    rng = np.random.default_rng(2)
    calib = [random_batch(rng, [180, 140, 100, 160]) for _ in range(4)]
    report = quantize_ptq(fp32_dir, tmp_path / "int8", lambda: iter(calib))
    int8_dir = tmp_path / "int8"
    assert (int8_dir / "model.pdmodel").is_file() and (int8_dir / "model.pdiparams").is_file()
    assert report["quantized_ops"].get("matmul_v2", 0) + report["quantized_ops"].get("mul", 0) > 0
    assert report["int8_bytes"] < report["fp32_bytes"]

    fp32 = InferenceModel(fp32_dir)
    int8 = InferenceModel(int8_dir, int8=True)
    for lengths in ([157], [190, 75, 133, 120]):
        feats, lens = random_batch(rng, lengths)
        ref_lp, ref_len = fp32.run(feats, lens)
        lp, ol = int8.run(feats, lens)
        assert lp.shape == ref_lp.shape and lp.dtype == np.float32
        np.testing.assert_array_equal(ol, ref_len)
        assert np.isfinite(lp).all()
        assert greedy_agreement(lp, ref_lp, ol) >= 0.9


def test_observer_pairs_do_not_round_fp32_activations(exported, tmp_path):
    """With no layer quantized, the 'INT8' model must compute exactly what FP32 does.

    PaddleSlim's ONNX format puts quantize/dequantize pairs after residual adds, layer norms,
    softmax... Left in, oneDNN executes them as real rounding (+2.4 CER points on the demo model).
    """
    _, fp32_dir = exported
    rng = np.random.default_rng(3)
    calib = [random_batch(rng, [150, 120]) for _ in range(2)]
    report = quantize_ptq(fp32_dir, tmp_path / "none", lambda: iter(calib), quantizable_op_type=["mul"])
    assert report["observers_removed"] > 0 and not report["quantized_ops"]
    feats, lens = random_batch(rng, [170, 90])
    ref_lp, _ = InferenceModel(fp32_dir).run(feats, lens)
    lp, ol = InferenceModel(tmp_path / "none", int8=True).run(feats, lens)
    for i, n in enumerate(ol):
        np.testing.assert_allclose(lp[i, :n], ref_lp[i, :n], atol=1e-4, rtol=0)
