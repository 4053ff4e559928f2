"""Building blocks of the U2 encoders and decoder, named as in PaddleSpeech so its state dicts load unchanged.

Parameter names (PaddleSpeech's U2Model state dict; docs/paddlespeech.md): `embed.conv.N`,
`embed.out.0` (x4) or `embed.linear` (x6, x8), `self_attn.linear_{q,k,v,out,pos}`,
`self_attn.pos_bias_{u,v}`, `feed_forward{,_macaron}.w_{1,2}`,
`conv_module.{pointwise_conv1,depthwise_conv,norm,pointwise_conv2}`, `global_cmvn.{mean,istd}`.
Paddle Linear weights are [in, out]. Everything here converts to a static graph with dynamic batch
and length; the streaming paths also take their caches and offsets as tensors.

Masks are additive biases (0 for a visible key, -1e9 for a hidden one) rather than boolean
masked_fill: the softmax result is the same (exp(-1e9) is exactly 0 in float32) and the exported
program stays a plain chain of adds that oneDNN fuses.
"""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_asr.errors import AsrError
from paddle_asr.models import fast_cpu_ops
from paddle_asr.models.fast_cpu_ops import Dropout, LayerNorm, Linear, conv_then_bias, pointwise_conv_time_major

NEG_INF = -1e9


class GlobalCMVN(nn.Layer):
    """(x - mean) * istd with persistable buffers, so CMVN travels inside checkpoints and exports."""

    def __init__(self, mean: np.ndarray, istd: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", paddle.to_tensor(mean, dtype="float32"), persistable=True)
        self.register_buffer("istd", paddle.to_tensor(istd, dtype="float32"), persistable=True)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return (x - self.mean) * self.istd


class Conv2dSubsampling(nn.Layer):
    """Stacked strided Conv2D + ReLU over (time, frequency), then Linear to d_model.

    `rate` 4: two 3x3 stride-2 convs (PaddleSpeech Conv2dSubsampling4, Linear named `out.0`);
    6: 3x3/2 then 5x5/3; 8: three 3x3/2 (Conv2dSubsampling6/8, Linear named `linear`).
    `channels` defaults to d_model (PaddleSpeech); fewer channels train faster.
    """

    KERNELS = {4: ((3, 2), (3, 2)), 6: ((3, 2), (5, 3)), 8: ((3, 2), (3, 2), (3, 2))}

    def __init__(self, idim: int, odim: int, rate: int, channels: int) -> None:
        super().__init__()
        if rate not in self.KERNELS:
            raise AsrError(f"subsampling rate {rate} is not supported; use 4, 6 or 8")
        self.kernels = self.KERNELS[rate]
        layers: list[nn.Layer] = []
        freq, in_ch = idim, 1
        for k, s in self.kernels:
            layers += [nn.Conv2D(in_ch, channels, k, s), nn.ReLU()]
            freq, in_ch = (freq - k) // s + 1, channels
        if freq < 1:
            raise AsrError(f"{idim}-dim features are too narrow for x{rate} subsampling")
        self.conv = nn.Sequential(*layers)
        if rate == 4:
            self.out = nn.Sequential(Linear(channels * freq, odim))
        else:
            self.linear = Linear(channels * freq, odim)
        self.subsampling_rate = rate
        # Input frames of look-ahead one output frame needs: sum of (kernel - 1) x input stride.
        self.right_context = sum(
            (k - 1) * math.prod(s2 for _, s2 in self.kernels[:i]) for i, (k, _) in enumerate(self.kernels)
        )

    def output_length(self, lengths):
        """Valid output frames for `lengths` input frames (works on ints and on tensors)."""
        for k, s in self.kernels:
            lengths = (lengths - k) // s + 1
        return lengths

    def _first_conv_as_gemm(self, x: paddle.Tensor) -> paddle.Tensor:
        """The first Conv2D + ReLU as one matrix product over 3x3 patches, with the bias folded in
        as a row of ones. Same result; on CPU, Paddle 3.0 adds a conv bias with a separate
        broadcast add over the whole [B, C, T', F'] map that costs more than the convolution
        itself."""
        conv = self.conv[0]
        k, s = self.kernels[0]
        batch, _, t, f = x.shape
        cols = F.unfold(x, [k, k], strides=s)  # [B, k*k, T'*F']
        out = fast_cpu_ops.bias_relu(paddle.matmul(conv.weight.reshape([conv.weight.shape[0], k * k]), cols), conv.bias,
                                     training=True) if fast_cpu_ops.compiled_kernels(x, True) else None
        if out is not None:  # the compiled bias + ReLU kernel
            return out.reshape([batch, conv.weight.shape[0], (t - k) // s + 1, (f - k) // s + 1])
        cols = paddle.concat([cols, paddle.ones([batch, 1, cols.shape[2]], cols.dtype)], axis=1)
        weight = paddle.concat([conv.weight.reshape([conv.weight.shape[0], k * k]), conv.bias.unsqueeze(1)], axis=1)
        out = F.relu(paddle.matmul(weight, cols))
        return out.reshape([batch, conv.weight.shape[0], (t - k) // s + 1, (f - k) // s + 1])

    def conv_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """[B, T, D] -> the flattened convolution maps [B, T', channels * F'], before the Linear.
        DeepSpeech2 feeds these to its RNN directly (its `out.0` Linear exists but is never used)."""
        if self.training and self.conv[0].bias is not None:
            # Training only: exported programs keep the Conv2D, which oneDNN fuses with its bias.
            x = self._first_conv_as_gemm(x.unsqueeze(1))
            for conv in self.conv[2::2]:
                y = F.conv2d(x, conv.weight, None, stride=conv._stride, padding=conv._padding,
                             dilation=conv._dilation, groups=conv._groups)
                fused = fast_cpu_ops.bias_relu(y, conv.bias, training=True)  # the compiled kernel, if built
                x = fused if fused is not None else F.relu(fast_cpu_ops.add_bias(y, conv.bias, axis=1, training=True))
        else:
            x = self.conv(x.unsqueeze(1))  # [B, C, T', F']
        c, f = x.shape[1], x.shape[3]  # static; batch and time stay dynamic for export
        return x.transpose([0, 2, 1, 3]).reshape([0, 0, c * f])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.conv_features(x)
        return self.out(x) if self.subsampling_rate == 4 else self.linear(x)


def sinusoid_table(max_len: int, d_model: int) -> np.ndarray:
    pos = np.arange(max_len, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * -(math.log(10000.0) / d_model))
    pe = np.zeros((max_len, d_model), dtype=np.float32)
    pe[:, 0::2] = np.sin(pos * div)
    pe[:, 1::2] = np.cos(pos * div)
    return pe[None]


def sinusoid(positions: paddle.Tensor, d_model: int) -> paddle.Tensor:
    """`sinusoid_table`'s encoding of real-valued positions [..] -> [.., d_model] (sin on even
    channels, cos on odd), computed in the graph: at integer positions, the table's rows."""
    div = paddle.exp(paddle.arange(0, d_model, 2, dtype="float32") * -(math.log(10000.0) / d_model))
    angles = positions.astype("float32").unsqueeze(-1) * div
    return paddle.stack([paddle.sin(angles), paddle.cos(angles)], axis=-1).flatten(-2)


class PositionalEncoding(nn.Layer):
    """Sinusoid positions. `relative=False` (Transformer, decoder): x*sqrt(d) + pe, as PaddleSpeech
    `PositionalEncoding`; `relative=True` (Conformer): x*sqrt(d), and pe goes to the attention.
    The table is a non-persistable buffer: never stored in checkpoints, as in PaddleSpeech."""

    def __init__(self, d_model: int, dropout_rate: float, relative: bool, max_len: int = 5000) -> None:
        super().__init__()
        self.max_len = max_len
        self.xscale = math.sqrt(d_model)
        self.relative = relative
        self.dropout = Dropout(dropout_rate)
        self.register_buffer("pe", paddle.to_tensor(sinusoid_table(max_len, d_model)), persistable=False)

    def at(self, positions: paddle.Tensor) -> paddle.Tensor:
        """pe at int64 positions [B, N] -> [B, N, d] (each in [0, max_len))."""
        return paddle.gather_nd(self.pe[0], positions.unsqueeze(-1))

    def forward(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """x [B, T, d] from position 0 -> (scaled x, plus pe when absolute; pe [1, T, d])."""
        pos_emb = self.pe[:, : paddle.shape(x)[1]]
        x = x * self.xscale
        if not self.relative:
            x = x + pos_emb
        return self.dropout(x), self.dropout(pos_emb)

    def forward_chunk(self, x: paddle.Tensor, offsets: paddle.Tensor, cache_size
                      ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """A streaming chunk of B streams: x [B, t, d], whose first frame is frame offsets[b] [B]
        of stream b, attending to `cache_size` cached keys then the chunk's own. -> (scaled x, plus
        its pe when absolute; pe of the keys [B, cache_size + t, d]: key j of stream b sits at
        position offsets[b] - cache_size + j, clamped at 0 where that is cache padding)."""
        chunk = paddle.shape(x)[1]
        steps = paddle.arange(cache_size + chunk, dtype="int64").unsqueeze(0)
        keys = offsets.unsqueeze(1) - cache_size + steps
        # maximum, not clip: oneDNN's fuse passes fold a clip into the elementwise op before it and
        # then need oneDNN for both, which the streaming predictor's op list
        # (export.inference.STREAMING_MKLDNN_OPS) does not allow ("oneDNN activation fuses require
        # use_mkldnn=True" at load).
        keys = paddle.maximum(keys, paddle.zeros_like(keys))
        x = x * self.xscale
        if not self.relative:
            x = x + self.at(offsets.unsqueeze(1) + steps[:, :chunk])
        return self.dropout(x), self.dropout(self.at(keys))


class MultiHeadedAttention(nn.Layer):
    """Scaled dot-product attention over `h` heads; `cache` holds earlier keys/values for streaming.

    cache layout (PaddleSpeech/WeNet): [B, h, cache_t, 2*d_k], keys then values on the last axis.
    With a cache, the attention reads it where it lies (two blocks of keys: the cache, then the
    chunk's own) and returns only the chunk's keys/values: splitting the cache into keys and values
    and joining it to the new frames would copy every cached frame of every layer each chunk (a
    quarter of a 16-stream chunk call on ONNX Runtime).
    """

    def __init__(self, n_head: int, n_feat: int, dropout_rate: float) -> None:
        super().__init__()
        if n_feat % n_head:
            raise AsrError(f"attention size {n_feat} must be divisible by attention_heads {n_head}")
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_q = Linear(n_feat, n_feat)
        self.linear_k = Linear(n_feat, n_feat)
        self.linear_v = Linear(n_feat, n_feat)
        self.linear_out = Linear(n_feat, n_feat)
        self.dropout = Dropout(dropout_rate)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([0, 0, self.h, self.d_k]).transpose([0, 2, 1, 3])  # [B, H, T, d_k]

    def _qkv(self, query, key, value):
        return self._heads(self.linear_q(query)), self._heads(self.linear_k(key)), self._heads(self.linear_v(value))

    def _content(self, q: paddle.Tensor, k: paddle.Tensor, cache) -> paddle.Tensor:
        """q . keys [B, H, T_q, C + T]: the cached keys first (C, none without a cache), then k.
        The cache's keys are read in place: q padded with zeros over the values' half."""
        own = paddle.matmul(q, k, transpose_y=True)
        if cache is None:
            return own
        past = paddle.matmul(paddle.concat([q, paddle.zeros_like(q)], axis=-1), cache, transpose_y=True)
        return paddle.concat([past, own], axis=-1)

    def _new_cache(self, k: paddle.Tensor, v: paddle.Tensor, cache):
        # Training never streams: the cache for the next chunk would be built and dropped.
        return None if self.training and cache is None else paddle.concat([k, v], axis=-1)

    def _context(self, scores: paddle.Tensor, v: paddle.Tensor, bias, cache=None) -> paddle.Tensor:
        if bias is not None:
            scores = scores + bias
        attn = self.dropout(F.softmax(scores, axis=-1))
        if cache is None:
            out = paddle.matmul(attn, v)
        else:  # the cache's values in place, as in `_content`
            c = paddle.shape(cache)[2]
            past = paddle.matmul(attn[:, :, :, :c], cache)[:, :, :, self.d_k:]
            out = past + paddle.matmul(attn[:, :, :, c:], v)
        out = out.transpose([0, 2, 1, 3]).reshape([0, 0, self.h * self.d_k])
        return self.linear_out(out)

    def forward(self, query, key, value, bias=None, cache=None) -> tuple[paddle.Tensor, paddle.Tensor]:
        """-> (output, this call's keys/values [B, H, T, 2*d_k], the cache's not included)."""
        q, k, v = self._qkv(query, key, value)
        scores = self._content(q, k, cache) / math.sqrt(self.d_k)
        return self._context(scores, v, bias, cache), self._new_cache(k, v, cache)

    def forward_shared_memory(self, query: paddle.Tensor, memory: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
        """Source attention of N = B*R query rows over B memories, row r reading memory r // R.

        Beam search and rescoring score R hypotheses per utterance: projecting each utterance's
        encoder output once, instead of once per hypothesis, removes most of the decoder's work.
        The R hypotheses' U positions are one block of R*U queries per utterance and head, so the
        two products are plain 4-D ones with no copy of the keys and values per hypothesis.
        bias: [B, 1, 1, T]. Same result as `forward` on memories repeated R times.
        """
        b = paddle.shape(memory)[0]
        n, u = paddle.shape(query)[0], paddle.shape(query)[1]
        q = self.linear_q(query).reshape([b, -1, u, self.h, self.d_k])  # [B, R, U, H, d_k]
        r = paddle.shape(q)[1]
        q = q.transpose([0, 3, 1, 2, 4]).reshape([b, self.h, -1, self.d_k])  # [B, H, R*U, d_k]
        k = self._heads(self.linear_k(memory))  # [B, H, T, d_k]
        v = self._heads(self.linear_v(memory))
        scores = paddle.matmul(q, k, transpose_y=True) / math.sqrt(self.d_k) + bias  # [B, H, R*U, T]
        out = paddle.matmul(self.dropout(F.softmax(scores, axis=-1)), v)  # [B, H, R*U, d_k]
        out = out.reshape([b, self.h, r, u, self.d_k]).transpose([0, 2, 3, 1, 4])  # [B, R, U, H, d_k]
        return self.linear_out(out.reshape([n, u, self.h * self.d_k]))


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    """Self-attention with learned position biases u, v (PaddleSpeech: no rel_shift; the position
    term uses the sinusoid of each key's absolute position, which streaming reproduces exactly)."""

    def __init__(self, n_head: int, n_feat: int, dropout_rate: float) -> None:
        super().__init__(n_head, n_feat, dropout_rate)
        self.linear_pos = Linear(n_feat, n_feat, bias_attr=False)
        init = nn.initializer.XavierUniform()
        self.pos_bias_u = self.create_parameter([self.h, self.d_k], default_initializer=init)
        self.pos_bias_v = self.create_parameter([self.h, self.d_k], default_initializer=init)

    def forward(self, x, pos_emb, bias=None, cache=None) -> tuple[paddle.Tensor, paddle.Tensor]:
        """pos_emb [1 or B, C + T, d]: the sinusoids of the keys' positions, cached keys first."""
        q, k, v = self._qkv(x, x, x)
        q_u = q + self.pos_bias_u.unsqueeze(1)
        q_v = q + self.pos_bias_v.unsqueeze(1)
        position = self._position(q_v, pos_emb) if cache is None else self._chunk_position(q_v, pos_emb)
        scores = (self._content(q_u, k, cache) + position) / math.sqrt(self.d_k)
        return self._context(scores, v, bias, cache), self._new_cache(k, v, cache)

    def _position(self, q_v: paddle.Tensor, pos_emb: paddle.Tensor) -> paddle.Tensor:
        """q_v . linear_pos(pos_emb) per head: [B, H, T, T_k]."""
        return paddle.matmul(q_v, self._heads(self.linear_pos(pos_emb)), transpose_y=True)

    def _chunk_position(self, q_v: paddle.Tensor, pos_emb: paddle.Tensor) -> paddle.Tensor:
        """`_position` for a streaming chunk, whose T queries are few against its C + T keys and
        whose pos_emb [B, C + T, d] differs per stream: q_v . (pe W_h)^T = (q_v W_h^T) . pe^T, so
        the projection runs on the T queries instead of the C + T positions (the projection of
        144 positions was a tenth of a 16-frame chunk call with 8 chunks of cache, ONNX Runtime INT8)."""
        b, t, d = paddle.shape(q_v)[0], paddle.shape(q_v)[2], self.h * self.d_k
        w = self.linear_pos.weight.reshape([d, self.h, self.d_k]).transpose([1, 2, 0])  # [H, d_k, d]: W_h^T
        qw = paddle.matmul(q_v.transpose([1, 0, 2, 3]).reshape([self.h, -1, self.d_k]), w)  # [H, B*T, d]
        qw = qw.reshape([self.h, b, t, d]).transpose([1, 0, 2, 3]).reshape([b, self.h * t, d])
        return paddle.matmul(qw, pos_emb, transpose_y=True).reshape([b, self.h, t, -1])


class PositionwiseFeedForward(nn.Layer):
    # Swish is SiLU (beta 1); Paddle 3.0's CPU silu kernel is faster than x * sigmoid(x), and
    # fast_cpu_ops.silu takes the compiled one when training on CPU. Each takes (x, training).
    ACTIVATIONS = {"swish": fast_cpu_ops.silu, "relu": lambda x, training: F.relu(x)}

    def __init__(self, idim: int, hidden: int, dropout_rate: float, activation: str = "relu") -> None:
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise AsrError(f"activation_type '{activation}' unsupported; use one of {sorted(self.ACTIVATIONS)}")
        self.w_1 = Linear(idim, hidden)
        self.w_2 = Linear(hidden, idim)
        self.dropout = Dropout(dropout_rate)
        self.activation = self.ACTIVATIONS[activation]

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x), self.training)))


class ConvolutionModule(nn.Layer):
    """Pointwise conv + GLU, depthwise conv, batch/layer norm, swish, pointwise conv.

    causal: the depthwise conv sees only the past (`kernel - 1` frames of left context, zeros at
    the start); streaming passes those frames in `cache` [B, C, kernel - 1] and gets the new ones back.
    """

    def __init__(self, channels: int, kernel_size: int, norm: str, causal: bool) -> None:
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise AsrError(f"cnn_module_kernel must be odd for a non-causal convolution, got {kernel_size}")
        self.lorder = kernel_size - 1 if causal else 0
        self.pointwise_conv1 = nn.Conv1D(channels, 2 * channels, 1)
        padding = 0 if causal else (kernel_size - 1) // 2
        self.depthwise_conv = nn.Conv1D(channels, channels, kernel_size, padding=padding, groups=channels)
        if norm == "batch_norm":
            self.norm = nn.BatchNorm1D(channels)
        elif norm == "layer_norm":
            self.norm = LayerNorm(channels)  # epsilon 1e-5, PaddleSpeech's default here
        else:
            raise AsrError(f"cnn_module_norm must be batch_norm or layer_norm, got '{norm}'")
        self.use_layer_norm = norm == "layer_norm"
        self.pointwise_conv2 = nn.Conv1D(channels, channels, 1)

    def forward(self, x: paddle.Tensor, pad_mask=None, cache=None) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        """x [B, T, C]; pad_mask [B, 1, T] (1 valid, 0 padding) or None when nothing is padded."""
        if cache is None and fast_cpu_ops.cpu_training(x, self.training):
            return self._forward_time_major(x, pad_mask), None
        x = x.transpose([0, 2, 1])  # [B, C, T]
        if pad_mask is not None:
            x = x * pad_mask  # padded frames must not reach the convolution
        new_cache = None
        if self.lorder > 0:
            if cache is None:
                x = F.pad(x, [self.lorder, 0], mode="constant", value=0.0, data_format="NCL")
            else:
                x = paddle.concat([cache, x], axis=2)
            new_cache = x[:, :, -self.lorder:]
        x = F.glu(self.pointwise_conv1(x), axis=1)
        if pad_mask is not None and self.lorder == 0:
            # Masked again after the pointwise conv: its bias makes padded frames non-zero and the
            # symmetric depthwise conv would carry them into the last valid frames, so a hypothesis
            # would depend on how much padding its batch had. (PaddleSpeech masks only before; the
            # same for unpadded input. A causal conv cannot look right, so it needs no second mask.)
            x = x * pad_mask
        x = self.depthwise_conv(x)
        if self.use_layer_norm:
            x = self.norm(x.transpose([0, 2, 1])).transpose([0, 2, 1])
        else:
            x = self.norm(x)
        x = self.pointwise_conv2(F.silu(x))
        if pad_mask is not None:
            x = x * pad_mask
        return x.transpose([0, 2, 1]), new_cache

    def _forward_time_major(self, x: paddle.Tensor, pad_mask) -> paddle.Tensor:
        """`forward` for training on CPU, the same function: the pointwise convolutions as matrix
        products on [B, T, C], so only the depthwise convolution and its norm see [B, C, T]."""
        time_mask = None if pad_mask is None else pad_mask.transpose([0, 2, 1])  # [B, T, 1]
        if time_mask is not None:
            x = x * time_mask
        if self.lorder > 0:  # zeros on the left, before the pointwise conv, as in `forward`
            x = paddle.concat([paddle.zeros([x.shape[0], self.lorder, x.shape[2]], x.dtype), x], axis=1)
        x = F.glu(pointwise_conv_time_major(self.pointwise_conv1, x), axis=-1)
        if time_mask is not None and self.lorder == 0:
            x = x * time_mask  # see `forward`
        time_major = fast_cpu_ops.depthwise_conv_time_major(self.depthwise_conv, x)
        if time_major is not None:  # the compiled kernel: no transposes at all
            if self.use_layer_norm:
                x = self.norm(time_major)
            else:  # BatchNorm1D's own call, on [B, T, C] (its NLC kernel is also faster than NCL here)
                bn = self.norm
                x = F.batch_norm(time_major, bn._mean, bn._variance, weight=bn.weight, bias=bn.bias,
                                 training=bn.training, momentum=bn._momentum, epsilon=bn._epsilon,
                                 data_format="NLC", use_global_stats=bn._use_global_stats)
            x = fast_cpu_ops.silu(x, self.training)
        else:
            x = conv_then_bias(self.depthwise_conv, x.transpose([0, 2, 1]), F.conv1d)  # [B, C, T]
            if self.use_layer_norm:
                x = F.silu(self.norm(x.transpose([0, 2, 1])))
            else:
                x = F.silu(self.norm(x)).transpose([0, 2, 1])
        x = pointwise_conv_time_major(self.pointwise_conv2, x)  # [B, T, C]
        return x if time_mask is None else x * time_mask
