"""The compiled CPU training kernels (models/cpu_kernels.cc): each op against Paddle's own kernel or
a float64 NumPy reference, values and gradients (their build and cache: tests/test_native_build.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_asr.models import cpu_kernels, fast_cpu_ops

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kernels():
    k = cpu_kernels.get()
    assert k is not None, cpu_kernels.status()  # this machine has g++: the kernels must build
    return k


def _tensor(rng, shape, scale=1.0, grad=True):
    t = paddle.to_tensor((rng.standard_normal(shape) * scale).astype("float32"))
    t.stop_gradient = not grad
    return t


def _values_and_grads(fn, inputs, grad_out):
    for t in inputs:
        t.clear_gradient()
    y = fn(*inputs)
    (y * grad_out).sum().backward()
    return [y.numpy(), *[t.grad.numpy().copy() for t in inputs]]


def _assert_close(ours, theirs, rtol=1e-5, atol=1e-5):
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_layer_norm_matches_paddles_values_and_gradients(kernels):
    rng = np.random.default_rng(0)
    ln = fast_cpu_ops.LayerNorm(96, epsilon=1e-12)
    ln.weight.set_value(_tensor(rng, [96], grad=False) + 1.0)
    ln.bias.set_value(_tensor(rng, [96], grad=False))
    ln.train()
    x = _tensor(rng, [3, 17, 96], scale=3.0)
    x_plain = paddle.to_tensor(x.numpy() + 5.0, stop_gradient=False)  # rows far from zero
    x_fast = paddle.to_tensor(x.numpy() + 5.0, stop_gradient=False)
    grad_out = _tensor(rng, [3, 17, 96], grad=False)
    plain = _values_and_grads(lambda t: F.layer_norm(t, [96], ln.weight, ln.bias, 1e-12), [x_plain], grad_out)
    plain += [ln.weight.grad.numpy().copy(), ln.bias.grad.numpy().copy()]
    ln.clear_gradients()
    fast = _values_and_grads(ln, [x_fast], grad_out) + [ln.weight.grad.numpy(), ln.bias.grad.numpy()]
    _assert_close(fast, plain, atol=3e-5)
    # evaluation and export take Paddle's own kernel
    ln.eval()
    np.testing.assert_allclose(ln(x_fast).numpy(), plain[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad,length", [(7, 40), (0, 54), (2, 3)],
                         ids=["symmetric", "causal-left-padded", "shorter-than-kernel"])
def test_depthwise_convolution_matches_conv1d_values_and_gradients(kernels, pad, length):
    """[B, T, C] through the kernel against Conv1D on [B, C, T]; kernel 15 (AISHELL's), and an
    input shorter than the kernel, where most taps fall on padding."""
    rng = np.random.default_rng(1)
    kernel_size = 15 if length > 3 else 5
    conv = paddle.nn.Conv1D(24, 24, kernel_size, padding=pad, groups=24)
    conv.weight.set_value(_tensor(rng, conv.weight.shape, grad=False))
    conv.bias.set_value(_tensor(rng, [24], grad=False))
    conv.train()
    x_value = rng.standard_normal((2, length, 24)).astype("float32")
    t_out = length + 2 * pad - kernel_size + 1
    grad_out = _tensor(rng, [2, t_out, 24], grad=False)

    def plain(x):
        return conv(x.transpose([0, 2, 1])).transpose([0, 2, 1])

    def run(fn):
        conv.clear_gradients()
        x = paddle.to_tensor(x_value, stop_gradient=False)
        y = fn(x)
        (y * grad_out).sum().backward()
        return [y.numpy(), x.grad.numpy(), conv.weight.grad.numpy().copy(), conv.bias.grad.numpy().copy()]

    assert fast_cpu_ops.depthwise_conv_time_major(conv, paddle.to_tensor(x_value)) is not None
    _assert_close(run(lambda x: fast_cpu_ops.depthwise_conv_time_major(conv, x)), run(plain), atol=2e-5)


def test_depthwise_convolution_declines_what_it_does_not_compute(kernels):
    x = paddle.randn([2, 9, 8])
    strided = paddle.nn.Conv1D(8, 8, 3, stride=2, padding=1, groups=8)
    grouped = paddle.nn.Conv1D(8, 8, 3, padding=1, groups=4)
    for conv in (strided, grouped):
        conv.train()
        assert fast_cpu_ops.depthwise_conv_time_major(conv, x) is None
    plain = paddle.nn.Conv1D(8, 8, 3, padding=1, groups=8)
    plain.eval()  # evaluation: Paddle's kernel
    assert fast_cpu_ops.depthwise_conv_time_major(plain, x) is None


def test_bias_relu_matches_add_then_relu(kernels):
    rng = np.random.default_rng(2)
    x_value = rng.standard_normal((2, 6, 5, 7)).astype("float32")
    bias = _tensor(rng, [6])
    grad_out = _tensor(rng, [2, 6, 5, 7], grad=False)

    def run(fn):
        bias.clear_gradient()
        x = paddle.to_tensor(x_value, stop_gradient=False)
        y = fn(x)
        (y * grad_out).sum().backward()
        return [y.numpy(), x.grad.numpy(), bias.grad.numpy().copy()]

    fast = run(lambda x: fast_cpu_ops.bias_relu(x, bias, training=True))
    plain = run(lambda x: F.relu(x + bias.reshape([1, 6, 1, 1])))
    _assert_close(fast, plain)
    assert (fast[0] == 0).mean() > 0.3  # the ReLU did cut
    assert fast_cpu_ops.bias_relu(paddle.to_tensor(x_value), bias, training=False) is None


def test_silu_against_float64_and_without_paddles_nan_at_the_extremes(kernels):
    x_value = np.concatenate([np.linspace(-120, 120, 4001), np.random.default_rng(3).standard_normal(5000) * 4])
    x = paddle.to_tensor(x_value.astype("float32"), stop_gradient=False)
    y = fast_cpu_ops.silu(x, training=True)
    y.backward(paddle.ones_like(y))
    xd = x.numpy().astype(np.float64)
    sig = 1.0 / (1.0 + np.exp(-xd))
    np.testing.assert_allclose(y.numpy(), xd * sig, rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(x.grad.numpy(), sig * (1 + xd * (1 - sig)), rtol=2e-6, atol=1e-7)
    assert np.isfinite(x.grad.numpy()).all()


def test_dropout_mask_is_the_seeds_keeps_the_rate_and_is_kept_for_the_gradient(kernels):
    x = paddle.ones([256, 1000])
    paddle.seed(11)
    first = fast_cpu_ops.dropout(x, 0.3, training=True).numpy()
    paddle.seed(11)
    np.testing.assert_array_equal(first, fast_cpu_ops.dropout(x, 0.3, training=True).numpy())
    np.testing.assert_allclose(np.unique(first), [0.0, 1 / 0.7], rtol=1e-6)
    dropped = first == 0
    assert abs(dropped.mean() - 0.3) < 0.003  # 256,000 draws: 0.3 +- 3.1 standard deviations
    # neighbours are independent: no stripes along rows or columns
    assert abs(dropped[:, 1:][dropped[:, :-1]].mean() - 0.3) < 0.01
    assert abs(dropped.mean(axis=1).std() - np.sqrt(0.3 * 0.7 / 1000)) < 0.004
    # the same thread count or another: the mask is the seed's alone
    script = ("import paddle_asr, paddle, numpy as np\nfrom paddle_asr.models import fast_cpu_ops\n"
              "paddle.base.core.set_num_threads(1)\npaddle.seed(11)\n"
              "kept = fast_cpu_ops.dropout(paddle.ones([256, 1000]), 0.3, training=True).numpy()\n"
              "print(int(np.flatnonzero(kept == 0).sum()))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    assert int(out.stdout.split()[-1]) == int(np.flatnonzero(dropped).sum())
    # gradient: through the kept elements, scaled as the values are
    x = paddle.randn([64, 33])
    x.stop_gradient = False
    y = fast_cpu_ops.dropout(x, 0.5, training=True)
    y.backward(paddle.ones_like(y))
    np.testing.assert_array_equal(x.grad.numpy() != 0, y.numpy() != 0)
    np.testing.assert_allclose(x.grad.numpy()[y.numpy() != 0], 2.0)
