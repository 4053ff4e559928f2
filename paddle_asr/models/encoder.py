"""Conformer and Transformer encoders (PaddleSpeech `ConformerEncoder`/`TransformerEncoder` layout,
paddlespeech/s2t/modules/encoder.py; docs/paddlespeech.md), with the U2 streaming machinery:
chunk masks for dynamic chunk training and masked decoding, and `forward_chunk`: the next chunk of
a batch of streams with their attention and convolution caches, which `U2StreamState`,
`gather_stream_states` and `scatter_stream_states` keep per stream between chunks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
            # Training: half the batches see full context, the rest a chunk of dynamic_chunk_min-max
            # frames (published: 1-25, up to 1 s of delay at x4 subsampling). Python's `random`
            # (seeded by the trainer) keeps training reproducible.
            chunk = random.randint(1, max(num_frames - 1, 1))
            if chunk > num_frames // 2:
                return None
            chunk = chunk % (c.dynamic_chunk_max - c.dynamic_chunk_min + 1) + c.dynamic_chunk_min
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

    def forward_chunk(self, xs: paddle.Tensor, offsets: paddle.Tensor, att_cache: paddle.Tensor,
                      cache_lengths: paddle.Tensor, cnn_cache: paddle.Tensor
                      ) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """The next chunk of B streams at once (PaddleSpeech/WeNet `forward_chunk`, batched).

        xs [B, (chunk-1)*subsampling + right_context + 1, D] raw features; offsets [B] int64:
        encoder frames each stream already emitted; att_cache [layers, B, heads, C, 2*d_k] with
        stream b's cache_lengths[b] valid frames RIGHT-aligned (the C - cache_lengths[b] frames on
        the left are padding, masked); cnn_cache [layers, B, d_model, kernel-1] (zeros at the start
        = the causal conv's zero padding). Returns (output [B, chunk, d_model], the chunk's own
        keys/values [layers, B, heads, chunk, 2*d_k], next cnn_cache): the next att_cache is the
        cache followed by them, which `scatter_stream_states` builds per stream, trimmed.
        """
        x = self.global_cmvn(xs) if self.global_cmvn is not None else xs
        x = self.embed(x)
        cache_size = paddle.shape(att_cache)[3]
        x, pos_emb = self.pos_enc.forward_chunk(x, offsets, cache_size)
        # Key j of stream b is padding while j < C - cache_lengths[b]; the chunk's own keys are all valid.
        keys = paddle.arange(cache_size + paddle.shape(x)[1], dtype="int64").unsqueeze(0)
        padding = (keys < (cache_size - cache_lengths).unsqueeze(1)).astype(x.dtype)
        att_bias = (padding * NEG_INF).unsqueeze(1).unsqueeze(1)  # [B, 1, 1, C + chunk]
        new_att, new_cnn = [], []
        for i, layer in enumerate(self.encoders):
            layer_cnn_cache = cnn_cache[i] if self.cnn_cache_frames > 0 else None
            x, layer_att, layer_cnn = layer(x, pos_emb, att_bias, None, att_cache[i], layer_cnn_cache)
            new_att.append(layer_att)
            if layer_cnn is not None:
                new_cnn.append(layer_cnn)
        next_cnn = paddle.stack(new_cnn, axis=0) if new_cnn else cnn_cache
        return self.after_norm(x), paddle.stack(new_att, axis=0), next_cnn

    def cache_shapes(self) -> tuple[list[int], list[int]]:
        """One stream's cache shapes: attention [layers, heads, 0, 2*d_k] (empty at the start),
        conv [layers, d_model, kernel-1] (1 frame, unused, without a causal conv)."""
        layers, heads = len(self.encoders), self.conf.attention_heads
        d_k = self.output_size // heads
        return [layers, heads, 0, 2 * d_k], [layers, self.output_size, max(self.cnn_cache_frames, 1)]


# The chunk program's inputs after xs, in order: what `gather_stream_states` builds.
CHUNK_CACHE_INPUTS = ("offsets", "att_cache", "cache_lengths", "cnn_cache")


@dataclass
class U2StreamState:
    """One U2 stream between chunks: encoder frames emitted, its attention cache [layers, heads, t,
    2*d_k] (t bounded by the required cache size) and conv cache [layers, d_model, kernel-1]."""

    offset: int
    att_cache: np.ndarray
    cnn_cache: np.ndarray

    @classmethod
    def new(cls, att_shape, cnn_shape) -> U2StreamState:
        """Offset 0, an empty attention cache, a zero conv cache (shapes from `Encoder.cache_shapes`)."""
        att_shape = list(att_shape)
        att_shape[2] = 0
        return cls(0, np.zeros(att_shape, np.float32), np.zeros(cnn_shape, np.float32))


def chunk_output_frames(window: int, subsampling_rate: int, right_context: int) -> int:
    """Encoder frames a chunk window of `window` feature frames gives (Conv2dSubsampling.output_length
    in closed form, for callers that only know the bundle's geometry)."""
    return (window - right_context - 1) // subsampling_rate + 1


class FeedBuffer:
    """One float32 array reused call after call for a feed whose shape changes (B streams' caches,
    tens of MB): a new array each call is page-faulted in again, which cost more than the copy into
    it. What `array` returns is valid until its next call, so one caller at a time (as a predictor)."""

    def __init__(self) -> None:
        self._flat = np.empty(0, np.float32)

    def array(self, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        if self._flat.size < size:
            self._flat = np.empty(size, np.float32)
        return self._flat[:size].reshape(shape)


def gather_stream_states(states: list[U2StreamState], chunk_frames: int, max_positions: int,
                         cache_size: int = 0, buffer: FeedBuffer | None = None) -> dict[str, np.ndarray]:
    """The chunk program's cache inputs for B streams about to emit `chunk_frames` encoder frames
    each: offsets [B], att_cache [L, B, H, C, 2*d_k] left-padded to the longest cache or to
    `cache_size` frames, whichever is more, and to one frame at least (C: the attention reads the
    cache in place, and Paddle's matmul rejects an empty one), cache_lengths [B], cnn_cache [L, B, d, k-1]. A
    stream whose frames would pass the positional table (`max_positions` encoder frames) is an
    AsrError: a longer stream must be cut into segments, each from a new state. att_cache is in
    `buffer` when one is given."""
    if not states:
        raise AsrError("encode_chunks needs at least one stream state")
    end = max(s.offset for s in states) + chunk_frames
    if end > max_positions:
        raise AsrError(f"a stream would reach encoder frame {end}, past the {max_positions} positions the model "
                       "encodes; end the segment and continue from a new stream state")
    lengths = np.asarray([s.att_cache.shape[2] for s in states], np.int64)
    first = states[0].att_cache
    shape = (first.shape[0], len(states), first.shape[1], max(int(lengths.max()), cache_size, 1), first.shape[3])
    att = buffer.array(shape) if buffer is not None else np.empty(shape, np.float32)
    for b, s in enumerate(states):  # each row written once: zeroing all of it first doubled the copy's cost
        pad = att.shape[3] - lengths[b]
        att[:, b, :, :pad] = 0.0
        att[:, b, :, pad:] = s.att_cache
    return {"offsets": np.asarray([s.offset for s in states], np.int64), "att_cache": att,
            "cache_lengths": lengths, "cnn_cache": np.stack([s.cnn_cache for s in states], axis=1)}


def scatter_stream_states(states: list[U2StreamState], chunk_frames: int, att_new: np.ndarray,
                          cnn_cache: np.ndarray, required_cache_size: int) -> list[U2StreamState]:
    """The B streams' next states from the chunk program's outputs (the chunk's keys/values
    att_new [L, B, H, t', 2*d_k], cnn_cache [L, B, d, k-1]): each stream's cache followed by its
    new frames, of which it keeps the last min(length + t', required) (all when required < 0), so
    a stream's memory stays bounded."""
    out = []
    for b, s in enumerate(states):
        keep = s.att_cache.shape[2] + chunk_frames
        if required_cache_size >= 0:
            keep = min(keep, required_cache_size)
        from_new = min(keep, chunk_frames)
        old = s.att_cache[:, :, s.att_cache.shape[2] - (keep - from_new):]
        att = np.concatenate([old, att_new[:, b, :, chunk_frames - from_new:chunk_frames]], axis=2)
        out.append(U2StreamState(s.offset + chunk_frames, att, np.ascontiguousarray(cnn_cache[:, b])))
    return out
