"""Conformer encoder (PaddleSpeech `ConformerEncoder` layout, REFERENCE §5.1, §8.2)."""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from paddle_asr.config import EncoderConfig
from paddle_asr.errors import AsrError
from paddle_asr.models.layers import (
    Conv2dSubsampling,
    ConvolutionModule,
    GlobalCMVN,
    PositionwiseFeedForward,
    RelPositionalEncoding,
    RelPositionMultiHeadedAttention,
)

SUBSAMPLING_RATES = {"conv2d": 4, "conv2d6": 6, "conv2d8": 8}


class ConformerEncoderLayer(nn.Layer):
    """Macaron FFN (x1/2) -> rel-pos MHSA -> convolution module -> FFN (x1/2) -> final norm; pre-norm."""

    def __init__(self, conf: EncoderConfig) -> None:
        super().__init__()
        d, eps = conf.output_size, conf.layer_norm_epsilon
        self.self_attn = RelPositionMultiHeadedAttention(conf.attention_heads, d, conf.attention_dropout_rate)
        self.feed_forward = PositionwiseFeedForward(d, conf.linear_units, conf.dropout_rate)
        self.feed_forward_macaron = PositionwiseFeedForward(d, conf.linear_units, conf.dropout_rate)
        self.conv_module = (
            ConvolutionModule(d, conf.cnn_module_kernel, conf.cnn_module_norm) if conf.use_cnn_module else None
        )
        self.norm_ff = nn.LayerNorm(d, epsilon=eps)
        self.norm_mha = nn.LayerNorm(d, epsilon=eps)
        self.norm_ff_macaron = nn.LayerNorm(d, epsilon=eps)
        if self.conv_module is not None:
            self.norm_conv = nn.LayerNorm(d, epsilon=eps)
            self.norm_final = nn.LayerNorm(d, epsilon=eps)
        self.dropout = nn.Dropout(conf.dropout_rate)

    def forward(self, x, pos_emb, att_bias, pad_mask):
        x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos_emb, att_bias))
        if self.conv_module is not None:
            x = x + self.dropout(self.conv_module(self.norm_conv(x), pad_mask))
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        if self.conv_module is not None:
            x = self.norm_final(x)
        return x


class ConformerEncoder(nn.Layer):
    def __init__(self, input_dim: int, conf: EncoderConfig, cmvn: tuple[np.ndarray, np.ndarray] | None) -> None:
        super().__init__()
        if conf.input_layer not in SUBSAMPLING_RATES:
            raise AsrError(f"model.encoder.input_layer '{conf.input_layer}' unknown; use one of {sorted(SUBSAMPLING_RATES)}")
        if not conf.normalize_before:
            raise AsrError("model.encoder.normalize_before: false is not supported (every published recipe uses true)")
        if conf.activation_type != "swish":
            raise AsrError(f"model.encoder.activation_type '{conf.activation_type}' unsupported; use swish")
        self.global_cmvn = GlobalCMVN(*cmvn) if cmvn is not None else None
        channels = conf.subsampling_channels or conf.output_size
        self.embed = Conv2dSubsampling(
            input_dim, conf.output_size, SUBSAMPLING_RATES[conf.input_layer], channels, conf.dropout_rate
        )
        self.pos_enc = RelPositionalEncoding(conf.output_size, conf.positional_dropout_rate)
        self.encoders = nn.LayerList([ConformerEncoderLayer(conf) for _ in range(conf.num_blocks)])
        self.after_norm = nn.LayerNorm(conf.output_size, epsilon=conf.layer_norm_epsilon)
        self.output_size = conf.output_size

    def output_length(self, lengths):
        return self.embed.output_length(lengths)

    def forward(self, feats: paddle.Tensor, feat_lengths: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """[B, T, D] features, [B] lengths -> [B, T', d_model] encodings, [B] valid lengths."""
        x = self.global_cmvn(feats) if self.global_cmvn is not None else feats
        x = self.embed(x)
        x, pos_emb = self.pos_enc(x)
        out_lengths = self.output_length(feat_lengths)
        valid = paddle.arange(paddle.shape(x)[1], dtype="int64").unsqueeze(0) < out_lengths.unsqueeze(1)
        valid = valid.astype(x.dtype)  # [B, T']
        att_bias = ((1.0 - valid) * -1e9).unsqueeze(1).unsqueeze(1)  # [B, 1, 1, T']: mask padded keys
        pad_mask = valid.unsqueeze(1)  # [B, 1, T'] for the convolution module
        for layer in self.encoders:
            x = layer(x, pos_emb, att_bias, pad_mask)
        return self.after_norm(x), out_lengths
