"""The CPU training replacements of models/fast_cpu_ops.py compute what Paddle's kernels compute:
values and gradients, op by op and through the whole Conformer, and dropout masks decided by the seed."""

import dataclasses
import random
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_asr.config import load_config
from paddle_asr.models import cpu_kernels, fast_cpu_ops
from paddle_asr.models.fast_cpu_ops import Dropout, Linear, add_bias, conv_then_bias, dropout, fast_log_softmax
from paddle_asr.models.registry import build_model
from tests.test_model import randomise_biases

REPO = Path(__file__).resolve().parents[1]


def _grads(tensors):
    return [None if t.grad is None else t.grad.numpy().copy() for t in tensors]


def _weighted_sum(y: paddle.Tensor) -> paddle.Tensor:
    """A loss whose gradient differs at every element (a plain sum would hide a transposed gradient)."""
    w = paddle.to_tensor(np.random.default_rng(1).standard_normal(y.shape).astype("float32"))
    return (y * w).sum()


def _assert_same_values_and_gradients(runs, x_value: np.ndarray) -> None:
    """Each (x -> y, parameters) of `runs` on the same input: outputs, input gradients and the
    parameters' gradients agree."""
    results = []
    for run, params in runs:
        for p in params:
            p.clear_gradient()
        x = paddle.to_tensor(x_value, stop_gradient=False)
        y = run(x)
        _weighted_sum(y).backward()
        results.append([y.numpy(), *_grads([x, *params])])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [[3, 7, 16], [5, 16]])
def test_linear_matches_nn_linear_values_and_gradients(shape):
    paddle.seed(0)
    fast = Linear(16, 24)
    plain = paddle.nn.Linear(16, 24)
    plain.set_state_dict(fast.state_dict())
    assert list(fast.state_dict()) == ["weight", "bias"]  # checkpoints keep PaddleSpeech's names
    fast.train()
    plain.train()
    x_value = np.random.default_rng(0).standard_normal(shape).astype("float32")
    _assert_same_values_and_gradients([(fast, [fast.weight, fast.bias]), (plain, [plain.weight, plain.bias])], x_value)


def test_linear_on_an_input_without_gradient_gives_the_parameters_theirs():
    paddle.seed(0)
    layer = Linear(4, 3)
    x = paddle.randn([2, 5, 4])  # stop_gradient: True, as features are
    _weighted_sum(layer(x)).backward()
    assert x.grad is None
    np.testing.assert_allclose(layer.bias.grad.numpy(),
                               np.random.default_rng(1).standard_normal([2, 5, 3]).sum((0, 1)), rtol=1e-5)


@pytest.mark.parametrize("shape,axis", [([4, 6, 9], 1), ([2, 6, 5, 3], 1), ([4, 9, 6], -1), ([4, 9, 6], 2)])
def test_add_bias_gradient_is_the_sum_over_the_other_axes(shape, axis):
    rng = np.random.default_rng(2)
    x = paddle.to_tensor(rng.standard_normal(shape).astype("float32"), stop_gradient=False)
    bias = paddle.to_tensor(rng.standard_normal(shape[axis]).astype("float32"), stop_gradient=False)
    y = add_bias(x, bias, axis=axis)
    expand = [1] * len(shape)
    expand[axis] = shape[axis]
    np.testing.assert_allclose(y.numpy(), x.numpy() + bias.numpy().reshape(expand), rtol=1e-6)
    _weighted_sum(y).backward()
    g = np.random.default_rng(1).standard_normal(shape)
    other = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias.grad.numpy(), g.sum(other), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,functional,shape", [
    (lambda: paddle.nn.Conv1D(6, 8, 1), F.conv1d, [3, 6, 11]),
    (lambda: paddle.nn.Conv1D(6, 6, 5, padding=2, groups=6), F.conv1d, [3, 6, 11]),
    (lambda: paddle.nn.Conv1D(6, 6, 5, groups=6), F.conv1d, [3, 6, 11]),
    (lambda: paddle.nn.Conv2D(4, 5, 3, 2), F.conv2d, [2, 4, 13, 9]),
])
def test_conv_then_bias_matches_the_layer(make, functional, shape):
    paddle.seed(0)
    conv = make()
    conv.bias.set_value(paddle.randn(conv.bias.shape))
    x_value = np.random.default_rng(3).standard_normal(shape).astype("float32")
    params = [conv.weight, conv.bias]
    _assert_same_values_and_gradients([(lambda x: conv_then_bias(conv, x, functional), params), (conv, params)],
                                      x_value)


def test_dropout_is_decided_by_the_seed_keeps_the_rate_and_scales_up():
    x = paddle.ones([64, 1000])
    paddle.seed(7)
    first = dropout(x, 0.1, training=True).numpy()
    paddle.seed(7)
    again = dropout(x, 0.1, training=True).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, dropout(x, 0.1, training=True).numpy())  # the next draw differs
    np.testing.assert_allclose(np.unique(first), [0.0, 1 / 0.9], rtol=1e-6)
    assert abs((first == 0).mean() - 0.1) < 0.005
    layer = Dropout(0.1)
    layer.eval()
    assert layer(x) is x  # evaluation: identity
    # The gradient flows through the kept elements only, scaled as the values are.
    x = paddle.ones([8, 50], dtype="float32")
    x.stop_gradient = False
    paddle.seed(3)
    y = dropout(x, 0.5, training=True)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y.numpy())


def test_fast_log_softmax_matches_log_softmax_and_is_exact_where_paddles_floors():
    logits = paddle.randn([2, 5, 4233]) * 4
    np.testing.assert_allclose(fast_log_softmax(logits).numpy(), F.log_softmax(logits, -1).numpy(),
                               rtol=1e-5, atol=1e-4)
    # Wide logits, against float64 NumPy (Paddle 3.0's CPU log_softmax floors its output at -64).
    wide = np.random.default_rng(0).standard_normal((2, 5, 4233)) * 30
    reference = wide - wide.max(-1, keepdims=True)
    reference -= np.log(np.exp(reference).sum(-1, keepdims=True))
    np.testing.assert_allclose(fast_log_softmax(paddle.to_tensor(wide, dtype="float32")).numpy(), reference,
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-kernels", "paddle-ops-only"])
@pytest.mark.parametrize(
    "config_path",
    [
        "recipes/aishell/conf/conformer.yaml",
        "recipes/aishell/conf/chunk_conformer.yaml",
        "recipes/demo/conf/conformer.yaml",
    ],
    ids=["aishell", "chunk", "demo"],
)
def test_the_conformer_trains_to_the_same_loss_and_gradients_with_and_without_them(monkeypatch, config_path, compiled):
    """One training step of a small Conformer in each recipe layout (x4 subsampling with C->C
    convolution, or the demo's x8; batch norm with symmetric, or layer norm with causal convolution
    and dynamic chunks; decoder), dropout and decoder input noise off so that both runs see the same
    function: the loss and every parameter's gradient must agree. Both with the compiled kernels
    (cpu_kernels.cc) and with the pure-Paddle replacements that run where they cannot be built."""
    if compiled:
        assert cpu_kernels.get() is not None, cpu_kernels.status()
    else:
        monkeypatch.setattr(cpu_kernels, "get", lambda: None)
    config = load_config(REPO / config_path)
    config = dataclasses.replace(config, vocab_size=50, input_dim=80)
    config.model.encoder = dataclasses.replace(config.model.encoder, num_blocks=2, output_size=64, linear_units=128,
                                               attention_heads=2, dropout_rate=0.0, positional_dropout_rate=0.0)
    config.model.decoder = dataclasses.replace(config.model.decoder, num_blocks=1, linear_units=128, attention_heads=2,
                                               dropout_rate=0.0, positional_dropout_rate=0.0, input_noise=0.0)
    paddle.seed(0)
    model = build_model(config)
    randomise_biases(model)
    rng = np.random.default_rng(0)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    feats = paddle.to_tensor(rng.standard_normal((3, 120, 80)).astype("float32"))
    feat_lengths = paddle.to_tensor(np.array([120, 97, 64], np.int64))
    labels = paddle.to_tensor(rng.integers(1, 49, (3, 6)).astype(np.int64))
    label_lengths = paddle.to_tensor(np.array([6, 4, 5], np.int64))

    def step():
        random.seed(5)  # the dynamic chunk size
        model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
        model.train()
        model.clear_gradients()
        loss, _ = model(feats, feat_lengths, labels, label_lengths)
        loss.backward()
        return float(loss), {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}

    fast_loss, fast_grads = step()
    monkeypatch.setattr(fast_cpu_ops, "cpu_training", lambda x, training: False)
    plain_loss, plain_grads = step()
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-5)
    assert fast_grads.keys() == plain_grads.keys() and len(fast_grads) > 100
    for name in plain_grads:
        if name.endswith("depthwise_conv.bias") and config.model.encoder.cnn_module_norm == "batch_norm":
            # Batch norm removes any constant shift, so this bias's gradient is zero in exact
            # arithmetic: both runs give rounding noise, which differs with the summation order.
            scale = np.abs(plain_grads[name.replace(".bias", ".weight")]).max()
            assert max(np.abs(fast_grads[name]).max(), np.abs(plain_grads[name]).max()) < 1e-3 * scale, name
            continue
        # Within 5e-4 of the gradient's own scale: float32 sums in another order, through a dozen
        # layers (the ops themselves are held tighter by the tests below).
        atol = max(2e-5, 5e-4 * float(np.abs(plain_grads[name]).max()))
        np.testing.assert_allclose(fast_grads[name], plain_grads[name], rtol=2e-4, atol=atol, err_msg=name)


@pytest.mark.parametrize("causal", [False, True], ids=["symmetric", "causal"])
@pytest.mark.parametrize("norm", ["batch_norm", "layer_norm"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-kernels", "paddle-ops-only"])
def test_the_time_major_convolution_module_is_the_same_function(monkeypatch, causal, norm, compiled):
    """Training on CPU runs the Conformer's convolution module with its pointwise convolutions as
    matrix products on [B, T, C] (and, compiled, its depthwise convolution and norm there too);
    padded frames and the causal left zeros must be treated alike."""
    if not compiled:
        monkeypatch.setattr(cpu_kernels, "get", lambda: None)
    from paddle_asr.models.layers import ConvolutionModule

    paddle.seed(0)
    module = ConvolutionModule(8, 5, norm, causal)
    trainable = [p for p in module.parameters() if not p.stop_gradient]
    for p in trainable:
        p.set_value(paddle.randn(p.shape) * 0.5)
    module.train()
    x_value = np.random.default_rng(4).standard_normal((3, 11, 8)).astype("float32")
    pad_mask = paddle.to_tensor((np.arange(11)[None, None, :] < np.array([11, 7, 4])[:, None, None]).astype("float32"))
    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(fast_cpu_ops, "cpu_training", lambda x, training: False)
        module.clear_gradients()
        x = paddle.to_tensor(x_value, stop_gradient=False)
        y, _ = module(x, pad_mask)
        _weighted_sum(y).backward()
        results.append([y.numpy(), x.grad.numpy(), *[p.grad.numpy() for p in trainable]])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
