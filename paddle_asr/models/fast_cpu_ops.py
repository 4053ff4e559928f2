"""Training on CPU: the same math as Paddle 3.0's kernels where profiles showed them slow.

Each replacement was timed against the kernel it replaces on the AISHELL Conformer's shapes
(8 x 500 frames, 2 threads; bench/train_step.py --profile) and checked against it (values and
gradients, tests/test_fast_cpu_ops.py). They only run in dynamic-graph training on CPU: evaluation,
exported programs and GPUs use Paddle's own kernels, so checkpoints and exports are unchanged.

- `fast_log_softmax`: Paddle's CPU `log_softmax` over a 4233-wide axis is much slower than
  max / exp / sum / log (and floors its output at -64).
- `dropout`: Paddle's CPU dropout draws its random numbers one at a time; NumPy's PCG64 draws the
  mask faster (16-bit draws). The NumPy generator is seeded from Paddle's, so `paddle.seed` still
  decides every mask and a resumed run repeats them.
- `add_bias` (convolution biases) and `Linear`: the gradient of a broadcast bias add is a sum over
  every axis but the bias's, and Paddle's CPU `reduce_sum` over a leading axis is far slower than
  the same sum as a matrix product with a vector of ones.
  `nn.Linear` spent more time in that sum than in its two gradient GEMMs.
- `pointwise_conv_time_major`: a kernel-1 convolution as that `Linear` on [B, T, C].
- Compiled kernels (cpu_kernels.cc, built once per machine by cpu_kernels.py) where Paddle's CPU
  kernel is far slower than its arithmetic: `LayerNorm` (its backward),
  `depthwise_conv_time_major` (the convolution module's depthwise convolution on [B, T, C], without
  the transposes around it), `bias_relu` (a convolution's bias and ReLU on its NCHW output, where
  Paddle's broadcast add is slow) and `silu`, and `dropout` (its mask drawn by a hash of the element
  index keyed from Paddle's generator, 1 byte an element kept for the backward). Where they cannot
  be compiled, the paths above and Paddle's own kernels run instead.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.autograd import PyLayer

from paddle_asr.models import cpu_kernels


def cpu_training(x: paddle.Tensor, training: bool) -> bool:
    """Whether the replacements apply: dynamic-graph training on CPU."""
    return training and paddle.in_dynamic_mode() and x.place.is_cpu_place()


def compiled_kernels(x: paddle.Tensor, training: bool) -> cpu_kernels.Kernels | None:
    """cpu_kernels.cc's ops where they apply to x (float32, CPU training) and could be built."""
    if not cpu_training(x, training) or x.dtype != paddle.float32:
        return None
    return cpu_kernels.get()


def _needs_grad(*tensors: paddle.Tensor) -> list[bool]:
    """Which of a PyLayer's inputs take a gradient (recorded in forward, for `_needed`)."""
    return [not t.stop_gradient for t in tensors]


def _needed(ctx, *grads: paddle.Tensor | None) -> tuple[paddle.Tensor | None, ...]:
    """A PyLayer's gradients, None for each input that takes none: Paddle refuses a gradient for an
    input that stops it (a frozen parameter, or the output of a frozen part of the network)."""
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_grad))


def _contiguous(*tensors: paddle.Tensor) -> list[paddle.Tensor]:
    # The compiled kernels index row-major memory; a strided view is copied first.
    return [t if t.is_contiguous() else t.contiguous() for t in tensors]


def fast_log_softmax(x: paddle.Tensor, axis: int = -1) -> paddle.Tensor:
    """log_softmax as (x - max) - log(sum(exp(x - max))): the same values (stable: the max is
    subtracted first), much faster on CPU than Paddle 3.0's `log_softmax` kernel for a
    4233-unit vocabulary. Used everywhere, the
    exported programs included."""
    shifted = x - x.max(axis=axis, keepdim=True).detach()
    return shifted - paddle.log(paddle.exp(shifted).sum(axis=axis, keepdim=True))


def dropout(x: paddle.Tensor, p: float, training: bool) -> paddle.Tensor:
    """F.dropout (upscale in training), with the mask drawn by NumPy when training on CPU."""
    if not training or p == 0.0:
        return x
    if not cpu_training(x, training):
        return F.dropout(x, p=p, training=True)
    kernels = compiled_kernels(x, training)
    if kernels is not None:
        # Two 31-bit draws from Paddle's generator key the kernel's hash: paddle.seed decides the mask.
        seed = int(paddle.randint(0, 2**31 - 1, [1])) | (int(paddle.randint(0, 2**31 - 1, [1])) << 32)
        return _DropoutFn.apply(x, seed, min(round(p * 2**32), 2**32 - 1), 1.0 / (1.0 - p), kernels)
    seed = int(paddle.randint(0, 2**31 - 1, [1]))
    # 16-bit draws (half the time of float32 ones): an element is dropped with probability
    # round(p * 65536) / 65536, within 1 / 131072 of p.
    keep = np.random.default_rng(seed).integers(0, 65536, x.shape, dtype=np.uint16) >= round(p * 65536)
    return _MaskScale.apply(x, keep, 1.0 / (1.0 - p))


def _scaled_mask(keep: np.ndarray, scale: float) -> paddle.Tensor:
    # np.multiply into a float32 buffer: Paddle's bool -> float cast and scale are each several
    # times slower than this (its same-shape multiply is fast).
    mask = np.empty(keep.shape, np.float32)
    np.multiply(keep, np.float32(scale), out=mask)
    return paddle.to_tensor(mask)


class _MaskScale(PyLayer):
    """x * keep * scale, keeping only the boolean mask for the gradient (1 byte an element, as
    Paddle's dropout keeps; a plain multiply would keep x and a float mask)."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor, keep: np.ndarray, scale: float) -> paddle.Tensor:
        ctx.keep, ctx.scale = keep, scale
        return x * _scaled_mask(keep, scale)

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        return grad * _scaled_mask(ctx.keep, ctx.scale)


class _DropoutFn(PyLayer):
    @staticmethod
    def forward(ctx, x: paddle.Tensor, seed: int, threshold: int, scale: float, kernels):
        y, keep = kernels.dropout_fwd(*_contiguous(x), seed, threshold, scale)
        ctx.kernels, ctx.keep, ctx.scale = kernels, keep, scale
        return y

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        return ctx.kernels.dropout_bwd(*_contiguous(grad), ctx.keep, ctx.scale)[0]


class Dropout(nn.Layer):
    """nn.Dropout through `dropout` above (no parameters: checkpoints are unchanged)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return dropout(x, self.p, self.training)


def _bias_grad(grad: paddle.Tensor, axis: int) -> paddle.Tensor:
    """The sum of `grad` over every axis but `axis`, as a GEMM with a vector of ones."""
    channels = grad.shape[axis]
    if axis == grad.ndim - 1:  # [..., C]: ones[1, N] @ grad[N, C]
        rows = grad.reshape([-1, channels])
        return paddle.matmul(paddle.ones([1, rows.shape[0]], grad.dtype), rows).reshape([channels])
    # [B, C, ...]: grad[B*C, L] @ ones[L, 1], then the small sum over B
    lead = int(np.prod(grad.shape[:axis]))
    cols = grad.reshape([lead * channels, -1])
    per_lead = paddle.matmul(cols, paddle.ones([cols.shape[1], 1], grad.dtype))
    return per_lead.reshape([lead, channels]).sum(axis=0)


class _AddBias(PyLayer):
    """y = x + bias broadcast along `axis`; the bias gradient is `_bias_grad`."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor, bias: paddle.Tensor, axis: int) -> paddle.Tensor:
        ctx.axis = axis
        ctx.x_needs_grad = not x.stop_gradient
        shape = [1] * x.ndim
        shape[axis] = bias.shape[0]
        return x + bias.reshape(shape)

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        return (grad if ctx.x_needs_grad else None), _bias_grad(grad, ctx.axis)


def add_bias(x: paddle.Tensor, bias: paddle.Tensor | None, axis: int = -1, training: bool = True) -> paddle.Tensor:
    """x + bias, the bias indexing `axis` of x; the fast gradient when training on CPU."""
    if bias is None:
        return x
    axis = axis % x.ndim
    if cpu_training(x, training) and not bias.stop_gradient:
        return _AddBias.apply(x, bias, axis)
    shape = [1] * x.ndim
    shape[axis] = bias.shape[0]
    return x + bias.reshape(shape)


class _LinearFn(PyLayer):
    """x @ weight + bias: the bias added in place to the product (no second [N, out] tensor), and
    the backward as three GEMMs (the bias gradient is `_bias_grad`)."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.needs_grad = _needs_grad(x, weight, bias)
        y = paddle.matmul(x, weight)
        y.add_(bias)
        return y

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        x, weight = ctx.saved_tensor()
        x_needs, weight_needs, bias_needs = ctx.needs_grad
        rows = grad.reshape([-1, grad.shape[-1]])
        weight_grad = paddle.matmul(x.reshape([-1, x.shape[-1]]), rows, transpose_x=True) if weight_needs else None
        bias_grad = _bias_grad(grad, grad.ndim - 1) if bias_needs else None
        x_grad = paddle.matmul(grad, weight, transpose_y=True) if x_needs else None
        return x_grad, weight_grad, bias_grad


class Linear(nn.Linear):
    """nn.Linear (same parameters, names and initialisation), through `_LinearFn` when training on
    CPU: one PyLayer whose bias gradient is a GEMM, close to the cost of a plain matmul."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if (
            self.bias is None
            or not cpu_training(x, self.training)
            or self.bias.stop_gradient
            or self.weight.stop_gradient
        ):
            return super().forward(x)
        return _LinearFn.apply(x, self.weight, self.bias)


def conv_then_bias(conv: nn.Layer, x: paddle.Tensor, functional) -> paddle.Tensor:
    """`conv(x)` for a Conv1D/Conv2D in NCHW layout, with its bias added by `add_bias` when training
    on CPU (Paddle adds a conv bias as a separate broadcast add whose gradient is the slow sum).
    `functional` is F.conv1d or F.conv2d, matching the layer."""
    if conv.bias is None or conv._padding_mode != "zeros" or not cpu_training(x, conv.training):
        return conv(x)
    y = functional(x, conv.weight, None, stride=conv._stride, padding=conv._padding, dilation=conv._dilation,
                   groups=conv._groups)
    return add_bias(y, conv.bias, axis=1, training=True)


def pointwise_conv_time_major(conv: nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """A kernel-1 Conv1D applied to time-major x [B, T, C_in] -> [B, T, C_out] as `_LinearFn`
    (for training on CPU): the same function as transposing to [B, C, T], convolving and
    transposing back, without the transposes or the convolution's im2col."""
    weight = conv.weight.squeeze(-1).transpose([1, 0])  # [out, in, 1] -> [in, out]
    if conv.bias is None:
        return paddle.matmul(x, weight)
    return _LinearFn.apply(x, weight, conv.bias)


class _LayerNormFn(PyLayer):
    @staticmethod
    def forward(ctx, x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor, epsilon: float, kernels):
        ctx.needs_grad = _needs_grad(x, weight, bias)
        x, weight, bias = _contiguous(x, weight, bias)
        y, mean, rstd = kernels.layer_norm_fwd(x, weight, bias, epsilon)
        ctx.kernels = kernels
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        x, weight, mean, rstd = ctx.saved_tensor()
        grad_x, grad_w, grad_b = ctx.kernels.layer_norm_bwd(x, weight, mean, rstd, *_contiguous(grad))
        return _needed(ctx, grad_x, grad_w, grad_b)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and names), through the compiled kernel when training on CPU."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        kernels = compiled_kernels(x, self.training)
        if (kernels is None or self.weight is None or self.bias is None or len(self._normalized_shape) != 1
                or self.weight.stop_gradient or self.bias.stop_gradient):
            return super().forward(x)
        return _LayerNormFn.apply(x, self.weight, self.bias, float(self._epsilon), kernels)


class _SiluFn(PyLayer):
    @staticmethod
    def forward(ctx, x: paddle.Tensor, kernels):
        (x,) = _contiguous(x)
        ctx.kernels = kernels
        ctx.save_for_backward(x)
        return kernels.silu_fwd(x)[0]

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        (x,) = ctx.saved_tensor()
        return ctx.kernels.silu_bwd(x, *_contiguous(grad))[0]


def silu(x: paddle.Tensor, training: bool) -> paddle.Tensor:
    """F.silu (swish), through the compiled kernel when training on CPU."""
    kernels = compiled_kernels(x, training)
    if kernels is None or x.stop_gradient:
        return F.silu(x)
    return _SiluFn.apply(x, kernels)


class _BiasReluFn(PyLayer):
    @staticmethod
    def forward(ctx, x: paddle.Tensor, bias: paddle.Tensor, kernels):
        x, bias = _contiguous(x, bias)
        y = kernels.bias_relu_fwd(x, bias)[0]
        ctx.kernels = kernels
        ctx.x_needs_grad = not x.stop_gradient
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        (y,) = ctx.saved_tensor()
        grad_x, grad_bias = ctx.kernels.bias_relu_bwd(y, *_contiguous(grad))
        return (grad_x if ctx.x_needs_grad else None), grad_bias


def bias_relu(x: paddle.Tensor, bias: paddle.Tensor, training: bool) -> paddle.Tensor | None:
    """relu(x + bias), the bias indexing axis 1 of x [B, C, ...], through the compiled kernel when
    training on CPU; None where that kernel does not apply (the caller takes its own path)."""
    kernels = compiled_kernels(x, training)
    if kernels is None or bias.stop_gradient:
        return None
    return _BiasReluFn.apply(x, bias, kernels)


class _DepthwiseConvFn(PyLayer):
    @staticmethod
    def forward(ctx, x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor, pad: int, kernels):
        ctx.needs_grad = _needs_grad(x, weight, bias)
        channels, kernel = weight.shape[0], weight.shape[-1]
        taps = weight.reshape([channels, kernel]).transpose([1, 0]).contiguous()  # [C, 1, K] -> [K, C]
        (x,) = _contiguous(x)
        ctx.kernels, ctx.pad, ctx.weight_shape = kernels, pad, weight.shape
        ctx.save_for_backward(x, taps)
        return kernels.depthwise_conv_fwd(x, taps, *_contiguous(bias), pad)[0]

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        x, taps = ctx.saved_tensor()
        grad_x, grad_taps, grad_bias = ctx.kernels.depthwise_conv_bwd(x, taps, *_contiguous(grad), ctx.pad)
        return _needed(ctx, grad_x, grad_taps.transpose([1, 0]).reshape(ctx.weight_shape), grad_bias)


def depthwise_conv_time_major(conv: nn.Layer, x: paddle.Tensor) -> paddle.Tensor | None:
    """A depthwise Conv1D (groups = channels, stride 1, zero padding) applied to time-major x
    [B, T, C] -> [B, T', C], through the compiled kernel when training on CPU: the same function as
    transposing to [B, C, T], convolving and transposing back. None where it does not apply."""
    kernels = compiled_kernels(x, conv.training)
    channels = conv.weight.shape[0]
    if (kernels is None or not isinstance(conv._padding, int) or conv.bias is None
            or conv._groups != channels or conv.weight.shape[1] != 1
            or conv._padding_mode != "zeros" or list(np.ravel(conv._stride)) != [1]
            or list(np.ravel(conv._dilation)) != [1] or x.shape[-1] != channels):
        return None
    return _DepthwiseConvFn.apply(x, conv.weight, conv.bias, conv._padding, kernels)
