"""Building blocks of the Conformer, named as in PaddleSpeech so its state dicts load unchanged.

Parameter names (REFERENCE §8.2): `embed.conv.N`, `embed.out.0`, `self_attn.linear_{q,k,v,out,pos}`,
`self_attn.pos_bias_{u,v}`, `feed_forward{,_macaron}.w_{1,2}`, `conv_module.{pointwise_conv1,
depthwise_conv,norm,pointwise_conv2}`, `global_cmvn.{mean,istd}`. Paddle Linear weights are
[in, out]. Everything here converts to a static graph with dynamic batch and length.
"""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_asr.errors import AsrError


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

    `rate` 4: two 3x3 stride-2 convs (PaddleSpeech Conv2dSubsampling4); 6: 3x3/2 then 5x5/3;
    8: three 3x3/2. `channels` defaults to d_model (PaddleSpeech); fewer channels train faster.
    """

    KERNELS = {4: ((3, 2), (3, 2)), 6: ((3, 2), (5, 3)), 8: ((3, 2), (3, 2), (3, 2))}

    def __init__(self, idim: int, odim: int, rate: int, channels: int, dropout_rate: float) -> None:
        super().__init__()
        if rate not in self.KERNELS:
            raise AsrError(f"subsampling rate {rate} is not supported; use 4, 6 or 8")
        self.kernels = self.KERNELS[rate]
        layers: list[nn.Layer] = []
        freq, in_ch = idim, 1
        for k, s in self.kernels:
            layers += [nn.Conv2D(in_ch, channels, k, s), nn.ReLU()]
            freq, in_ch = (freq - k) // s + 1, channels
        self.conv = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Linear(channels * freq, odim))
        self.rate = rate
        # Frames of look-ahead the first output needs, for streaming and length checks.
        self.right_context = sum((k - 1) * math.prod(s2 for _, s2 in self.kernels[:i]) for i, (k, _) in enumerate(self.kernels))

    def output_length(self, lengths):
        """Valid output frames for `lengths` input frames (works on ints and on tensors)."""
        for k, s in self.kernels:
            lengths = (lengths - k) // s + 1
        return lengths

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.conv(x.unsqueeze(1))  # [B, C, T', F']
        c, f = x.shape[1], x.shape[3]  # static; batch and time stay dynamic for export
        x = x.transpose([0, 2, 1, 3]).reshape([0, 0, c * f])
        return self.out(x)


class RelPositionalEncoding(nn.Layer):
    """Scaled input plus the sinusoid table for relative attention (table not stored in checkpoints)."""

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000) -> None:
        super().__init__()
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout_rate)
        pos = np.arange(max_len, dtype=np.float32)[:, None]
        div = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * -(math.log(10000.0) / d_model))
        pe = np.zeros((max_len, d_model), dtype=np.float32)
        pe[:, 0::2] = np.sin(pos * div)
        pe[:, 1::2] = np.cos(pos * div)
        self.register_buffer("pe", paddle.to_tensor(pe[None]), persistable=False)

    def forward(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        pos_emb = self.pe[:, : paddle.shape(x)[1]]
        return self.dropout(x * self.xscale), self.dropout(pos_emb)


class RelPositionMultiHeadedAttention(nn.Layer):
    """Multi-head self-attention with learned position biases u, v (PaddleSpeech, no rel_shift)."""

    def __init__(self, n_head: int, n_feat: int, dropout_rate: float) -> None:
        super().__init__()
        if n_feat % n_head:
            raise AsrError(f"output_size {n_feat} must be divisible by attention_heads {n_head}")
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias_attr=False)
        init = nn.initializer.XavierUniform()
        self.pos_bias_u = self.create_parameter([self.h, self.d_k], default_initializer=init)
        self.pos_bias_v = self.create_parameter([self.h, self.d_k], default_initializer=init)
        self.dropout = nn.Dropout(dropout_rate)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([0, 0, self.h, self.d_k])  # [B, T, H, d_k]

    def forward(self, x: paddle.Tensor, pos_emb: paddle.Tensor, att_bias: paddle.Tensor) -> paddle.Tensor:
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x)).transpose([0, 2, 1, 3])
        v = self._heads(self.linear_v(x)).transpose([0, 2, 1, 3])
        p = self._heads(self.linear_pos(pos_emb)).transpose([0, 2, 1, 3])  # [1, H, T, d_k]
        q_u = (q + self.pos_bias_u).transpose([0, 2, 1, 3])
        q_v = (q + self.pos_bias_v).transpose([0, 2, 1, 3])
        scores = paddle.matmul(q_u, k, transpose_y=True) + paddle.matmul(q_v, p, transpose_y=True)
        scores = scores * (1.0 / math.sqrt(self.d_k)) + att_bias  # att_bias: 0 or -1e9 per key
        attn = self.dropout(F.softmax(scores, axis=-1))
        out = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([0, 0, self.h * self.d_k])
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Layer):
    def __init__(self, idim: int, hidden: int, dropout_rate: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden)
        self.w_2 = nn.Linear(hidden, idim)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.w_2(self.dropout(F.swish(self.w_1(x))))


class ConvolutionModule(nn.Layer):
    """Pointwise conv + GLU, depthwise conv, batch/layer norm, swish, pointwise conv."""

    def __init__(self, channels: int, kernel_size: int, norm: str) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise AsrError(f"cnn_module_kernel must be odd, got {kernel_size}")
        self.pointwise_conv1 = nn.Conv1D(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1D(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels)
        if norm == "batch_norm":
            self.norm = nn.BatchNorm1D(channels)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(channels)
        else:
            raise AsrError(f"cnn_module_norm must be batch_norm or layer_norm, got '{norm}'")
        self.use_layer_norm = norm == "layer_norm"
        self.pointwise_conv2 = nn.Conv1D(channels, channels, 1)

    def forward(self, x: paddle.Tensor, pad_mask: paddle.Tensor) -> paddle.Tensor:
        x = x.transpose([0, 2, 1]) * pad_mask  # [B, C, T]; padded frames must not leak into the conv
        # Masked again after the pointwise conv: its bias makes padded frames non-zero, and the
        # depthwise conv would carry them into the last valid frames, so a hypothesis would depend
        # on how much padding its batch had. (WeNet and PaddleSpeech mask only before; identical
        # for unpadded input.)
        x = F.glu(self.pointwise_conv1(x), axis=1) * pad_mask
        x = self.depthwise_conv(x)
        if self.use_layer_norm:
            x = self.norm(x.transpose([0, 2, 1])).transpose([0, 2, 1])
        else:
            x = self.norm(x)
        x = self.pointwise_conv2(F.swish(x)) * pad_mask
        return x.transpose([0, 2, 1])
