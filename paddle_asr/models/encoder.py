"""Conformer and Transformer encoders (PaddleSpeech `ConformerEncoder`/`TransformerEncoder` layout,
paddlespeech/s2t/modules/encoder.py; docs/paddlespeech.md), with the U2 streaming machinery:
chunk masks for dynamic chunk training and masked decoding, and `forward_chunk` with attention
and convolution caches.
"""

from __future__ import annotations

import random

import numpy as np
import paddle
from paddle import nn

from paddle_asr.config import EncoderConfig
from paddle_asr.errors import AsrError
from paddle_asr.models.fast_cpu_ops import Dropout, LayerNorm, Linear
from paddle_asr.models.layers import (
    NEG_INF,
    Conv2dSubsampling,
    ConvolutionModule,
    GlobalCMVN,
    MultiHeadedAttention,
    PositionalEncoding,
    PositionwiseFeedForward,
    RelPositionMultiHeadedAttention,
)

SUBSAMPLING_RATES = {"conv2d": 4, "conv2d6": 6, "conv2d8": 8}


class ConformerEncoderLayer(nn.Layer):
    """Macaron FFN (x1/2) -> rel-pos MHSA -> convolution module -> FFN (x1/2) -> final norm; pre-norm."""

    def __init__(self, conf: EncoderConfig) -> None:
        super().__init__()
        d, eps = conf.output_size, conf.layer_norm_epsilon
        self.relative = conf.pos_enc_layer_type == "rel_pos"
        attention = RelPositionMultiHeadedAttention if self.relative else MultiHeadedAttention
        self.self_attn = attention(conf.attention_heads, d, conf.attention_dropout_rate)
        self.feed_forward = PositionwiseFeedForward(d, conf.linear_units, conf.dropout_rate, conf.activation_type)
        self.feed_forward_macaron = PositionwiseFeedForward(
            d, conf.linear_units, conf.dropout_rate, conf.activation_type
        )
        self.conv_module = (
            ConvolutionModule(d, conf.cnn_module_kernel, conf.cnn_module_norm, conf.causal)
            if conf.use_cnn_module
            else None
        )
        self.norm_ff = LayerNorm(d, epsilon=eps)
        self.norm_mha = LayerNorm(d, epsilon=eps)
        self.norm_ff_macaron = LayerNorm(d, epsilon=eps)
        if self.conv_module is not None:
            self.norm_conv = LayerNorm(d, epsilon=eps)
            self.norm_final = LayerNorm(d, epsilon=eps)
        self.dropout = Dropout(conf.dropout_rate)

    def forward(self, x, pos_emb, att_bias, pad_mask, att_cache=None, cnn_cache=None):
        x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        y = self.norm_mha(x)
        if self.relative:
            att, new_att_cache = self.self_attn(y, pos_emb, att_bias, att_cache)
        else:  # absolute positions were added to the input
            att, new_att_cache = self.self_attn(y, y, y, att_bias, att_cache)
        x = x + self.dropout(att)
        new_cnn_cache = None
        if self.conv_module is not None:
            conv, new_cnn_cache = self.conv_module(self.norm_conv(x), pad_mask, cnn_cache)
            x = x + self.dropout(conv)
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        if self.conv_module is not None:
            x = self.norm_final(x)
        return x, new_att_cache, new_cnn_cache


class TransformerEncoderLayer(nn.Layer):
    """Self-attention -> FFN (ReLU), pre-norm. `concat_linear` is unused but present in PaddleSpeech
    state dicts (it is created whatever `concat_after` says), so it exists here too."""

    def __init__(self, conf: EncoderConfig) -> None:
        super().__init__()
        d, eps = conf.output_size, conf.layer_norm_epsilon
        self.self_attn = MultiHeadedAttention(conf.attention_heads, d, conf.attention_dropout_rate)
        self.feed_forward = PositionwiseFeedForward(d, conf.linear_units, conf.dropout_rate, "relu")
        self.norm1 = LayerNorm(d, epsilon=eps)
        self.norm2 = LayerNorm(d, epsilon=eps)
        self.concat_linear = Linear(2 * d, d)
        self.dropout = Dropout(conf.dropout_rate)

    def forward(self, x, pos_emb, att_bias, pad_mask, att_cache=None, cnn_cache=None):
        y = self.norm1(x)
        att, new_att_cache = self.self_attn(y, y, y, att_bias, att_cache)
        x = x + self.dropout(att)
        x = x + self.dropout(self.feed_forward(self.norm2(x)))
        return x, new_att_cache, None


def chunk_attention_allowed(size, chunk_size: int, num_left_chunks: int) -> paddle.Tensor:
    """[size, size] float, 1 where query i may see key j: j's chunk is i's or earlier, and at most
    `num_left_chunks` before it (<0: all). PaddleSpeech `subsequent_chunk_mask`, built from tensors."""
    idx = paddle.arange(size, dtype="int64") // chunk_size
    q, k = idx.unsqueeze(1), idx.unsqueeze(0)
    allowed = k <= q
    if num_left_chunks >= 0:
        allowed = paddle.logical_and(allowed, k >= q - num_left_chunks)
    return allowed.astype("float32")


class Encoder(nn.Layer):
    """Global CMVN -> conv2d subsampling -> positional encoding -> N blocks -> LayerNorm."""

    def __init__(
        self, input_dim: int, conf: EncoderConfig, encoder_type: str, cmvn: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        super().__init__()
        # The allowed values of the config, and how they combine, are checked when it is loaded (config.py).
        if not conf.normalize_before:
            raise AsrError("model.encoder.normalize_before: false is not supported (every published recipe uses true)")
        relative = conf.pos_enc_layer_type == "rel_pos"
        self.global_cmvn = GlobalCMVN(*cmvn) if cmvn is not None else None
        channels = conf.subsampling_channels or conf.output_size
        self.embed = Conv2dSubsampling(input_dim, conf.output_size, SUBSAMPLING_RATES[conf.input_layer], channels)
        self.pos_enc = PositionalEncoding(conf.output_size, conf.positional_dropout_rate, relative=relative)
        layer_cls = ConformerEncoderLayer if encoder_type == "conformer" else TransformerEncoderLayer
        self.encoders = nn.LayerList([layer_cls(conf) for _ in range(conf.num_blocks)])
        self.after_norm = LayerNorm(conf.output_size, epsilon=conf.layer_norm_epsilon)
        self.output_size = conf.output_size
        self.conf = conf
        self.encoder_type = encoder_type
        conv = getattr(self.encoders[0], "conv_module", None) if len(self.encoders) else None
        # Frames of convolution history a streaming chunk carries over (0: no conv cache).
        self.cnn_cache_frames = conv.lorder if conv is not None else 0

    @property
    def supports_streaming(self) -> bool:
        """Chunk-by-chunk decoding is exact only for a model trained with chunk masks and, for the
        Conformer, causal convolutions (a symmetric conv would need frames from the next chunk)."""
        chunked = self.conf.use_dynamic_chunk or self.conf.static_chunk_size > 0
        return chunked and (self.encoder_type == "transformer" or not self.conf.use_cnn_module or self.conf.causal)

    def output_length(self, lengths):
        return self.embed.output_length(lengths)

    @property
    def max_output_frames(self) -> int:
        """Encoder frames the positional encoding covers: longer inputs cannot be encoded."""
        return self.pos_enc.max_len

    @paddle.jit.not_to_static  # a Python decision made while tracing, never graph control flow
    def _chunking(self, decoding_chunk_size: int, num_decoding_left_chunks: int, num_frames: int):
        """(chunk size, left chunks) of the attention mask, or None for full attention (PaddleSpeech
        `add_optional_chunk_mask`). decoding_chunk_size 0 means training: a random chunk per batch."""
        c = self.conf
        if c.use_dynamic_chunk:
            if decoding_chunk_size < 0:
                return None
            if decoding_chunk_size > 0:
                return decoding_chunk_size, num_decoding_left_chunks
            # Training: half the batches see full context, the rest a chunk of 1-25 frames (up to
            # 1 s of delay at x4 subsampling). Python's `random` (seeded by the trainer) keeps
            # training reproducible.
            chunk = random.randint(1, max(num_frames - 1, 1))
            if chunk > num_frames // 2:
                return None
            chunk = chunk % 25 + 1
            left = -1
            if c.use_dynamic_left_chunk:
                left = random.randint(0, max((num_frames - 1) // chunk, 0))
            return chunk, left
        if c.static_chunk_size > 0:
            return c.static_chunk_size, num_decoding_left_chunks
        return None

    def forward(self, feats: paddle.Tensor, feat_lengths: paddle.Tensor, decoding_chunk_size: int = -1,
                num_decoding_left_chunks: int = -1) -> tuple[paddle.Tensor, paddle.Tensor]:
        """[B, T, D] features, [B] lengths -> [B, T', d_model] encodings, [B] valid lengths.

        decoding_chunk_size: -1 full attention; >0 the chunk mask of streaming decoding (same
        result as `forward_chunk` over the chunks); 0 the random chunks of dynamic chunk training.
        """
        x = self.global_cmvn(feats) if self.global_cmvn is not None else feats
        x = self.embed(x)
        x, pos_emb = self.pos_enc(x)
        out_lengths = self.output_length(feat_lengths)
        num_frames = paddle.shape(x)[1]
        valid = (paddle.arange(num_frames, dtype="int64").unsqueeze(0) < out_lengths.unsqueeze(1)).astype(x.dtype)
        att_bias = ((1.0 - valid) * NEG_INF).unsqueeze(1).unsqueeze(1)  # [B, 1, 1, T']: hide padded keys
        chunking = self._chunking(decoding_chunk_size, num_decoding_left_chunks, x.shape[1])
        if chunking is not None:
            allowed = chunk_attention_allowed(num_frames, *chunking)
            att_bias = att_bias + ((1.0 - allowed) * NEG_INF).unsqueeze(0).unsqueeze(0)  # [B, 1, T', T']
        pad_mask = valid.unsqueeze(1)  # [B, 1, T'] for the convolution module
        for layer in self.encoders:
            x, _, _ = layer(x, pos_emb, att_bias, pad_mask)
        return self.after_norm(x), out_lengths

    def forward_chunk(self, xs: paddle.Tensor, offset, required_cache_size, att_cache: paddle.Tensor,
                      cnn_cache: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """One streaming chunk (batch 1), PaddleSpeech/WeNet `forward_chunk`.

        xs [1, (chunk-1)*subsampling + right_context + 1, D] raw features; offset: encoder frames
        already emitted; required_cache_size: attention frames to keep for the next chunk (<0: all);
        att_cache [layers, heads, cache_t, 2*d_k] (cache_t 0 at the start); cnn_cache
        [layers, 1, d_model, kernel-1] (zeros at the start = the causal conv's zero padding).
        offset and required_cache_size may be int64 tensors of shape [1] (the exported program).
        Returns (output [1, chunk, d_model], next att_cache, next cnn_cache).
        """
        x = self.global_cmvn(xs) if self.global_cmvn is not None else xs
        x = self.embed(x)
        cache_t = paddle.shape(att_cache)[2]
        chunk = paddle.shape(x)[1]
        x, _ = self.pos_enc(x, offset)
        # Keys are the cached frames then this chunk: positions offset - cache_t ... offset + chunk.
        pos_emb = self.pos_enc.position_encoding(offset - cache_t, cache_t + chunk)
        key_size = cache_t + chunk
        if isinstance(required_cache_size, int):
            start = 0 if required_cache_size < 0 else max(int(key_size) - required_cache_size, 0)
        else:
            start = paddle.where(required_cache_size < 0, paddle.zeros_like(required_cache_size),
                                 paddle.maximum(key_size.astype("int64") - required_cache_size,
                                                paddle.zeros_like(required_cache_size)))
        new_att, new_cnn = [], []
        for i, layer in enumerate(self.encoders):
            layer_cnn_cache = cnn_cache[i] if self.cnn_cache_frames > 0 else None
            x, layer_att, layer_cnn = layer(x, pos_emb, None, None, att_cache[i:i + 1], layer_cnn_cache)
            new_att.append(paddle.slice(layer_att, axes=[2], starts=[start], ends=[key_size]))
            if layer_cnn is not None:
                new_cnn.append(layer_cnn)
        next_cnn = paddle.stack(new_cnn, axis=0) if new_cnn else cnn_cache
        return self.after_norm(x), paddle.concat(new_att, axis=0), next_cnn

    def initial_caches(self) -> tuple[np.ndarray, np.ndarray]:
        """Zero caches for the first chunk: attention [layers, heads, 0, 2*d_k], conv [layers, 1, d, kernel-1]."""
        layers, heads = len(self.encoders), self.conf.attention_heads
        d_k = self.output_size // heads
        att = np.zeros((layers, heads, 0, 2 * d_k), np.float32)
        cnn = np.zeros((layers, 1, self.output_size, max(self.cnn_cache_frames, 1)), np.float32)
        return att, cnn
