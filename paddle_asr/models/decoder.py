"""Transformer attention decoder (PaddleSpeech `TransformerDecoder` layout; docs/paddlespeech.md)."""

from __future__ import annotations

import paddle
from paddle import nn

from paddle_asr.config import DecoderConfig
from paddle_asr.errors import AsrError
from paddle_asr.models.fast_cpu_ops import Dropout, LayerNorm, Linear
from paddle_asr.models.layers import (
    NEG_INF,
    MultiHeadedAttention,
    PositionalEncoding,
    PositionwiseFeedForward,
    sinusoid,
    sinusoid_table,
)

LAYER_NORM_EPSILON = 1e-12  # PaddleSpeech's decoder norms
MAX_MEMORY_FRAMES = 5000  # as the encoder's positional table (meta.json max_encoder_frames)


class DecoderLayer(nn.Layer):
    """Masked self-attention -> source attention over the encoder output -> FFN (ReLU); pre-norm.
    `concat_linear1/2` are unused but exist in every PaddleSpeech decoder state dict."""

    def __init__(self, d: int, conf: DecoderConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadedAttention(conf.attention_heads, d, conf.self_attention_dropout_rate)
        self.src_attn = MultiHeadedAttention(conf.attention_heads, d, conf.src_attention_dropout_rate)
        self.feed_forward = PositionwiseFeedForward(d, conf.linear_units, conf.dropout_rate, "relu")
        self.norm1 = LayerNorm(d, epsilon=LAYER_NORM_EPSILON)
        self.norm2 = LayerNorm(d, epsilon=LAYER_NORM_EPSILON)
        self.norm3 = LayerNorm(d, epsilon=LAYER_NORM_EPSILON)
        self.dropout = Dropout(conf.dropout_rate)
        self.concat_linear1 = Linear(2 * d, d)
        self.concat_linear2 = Linear(2 * d, d)

    def forward(self, x, tgt_bias, memory, memory_bias):
        y = self.norm1(x)
        x = x + self.dropout(self.self_attn(y, y, y, tgt_bias)[0])
        x = x + self.dropout(self.src_attn.forward_shared_memory(self.norm2(x), memory, memory_bias))
        return x + self.dropout(self.feed_forward(self.norm3(x)))


class TransformerDecoder(nn.Layer):
    def __init__(self, vocab_size: int, d: int, conf: DecoderConfig) -> None:
        super().__init__()
        if not conf.normalize_before:
            raise AsrError("model.decoder.normalize_before: false is not supported (every published recipe uses true)")
        self.embed = nn.Sequential(
            nn.Embedding(vocab_size, d), PositionalEncoding(d, conf.positional_dropout_rate, relative=False)
        )
        self.decoders = nn.LayerList([DecoderLayer(d, conf) for _ in range(conf.num_blocks)])
        self.after_norm = LayerNorm(d, epsilon=LAYER_NORM_EPSILON)
        self.output_layer = Linear(d, vocab_size)
        # model.decoder.memory_positions; a non-persistable buffer, so checkpoints are unchanged.
        self.vocab_size, self.d = vocab_size, d
        self.input_noise = conf.input_noise
        self.memory_positions = conf.memory_positions
        self.memory_position_unit = conf.memory_position_unit if conf.memory_positions else "frame"
        if conf.memory_positions:
            self.register_buffer("memory_pe", paddle.to_tensor(sinusoid_table(MAX_MEMORY_FRAMES, d)),
                                 persistable=False)

    def noisy_inputs(self, ys_in: paddle.Tensor) -> paddle.Tensor:
        """Training inputs `<sos> y` [B, U] with tokens after <sos> replaced at random
        (model.decoder.input_noise) by ids 1..V-2: neither blank (0) nor <sos/eos> (V-1)."""
        if not self.input_noise:
            return ys_in
        replace = paddle.rand(ys_in.shape) < self.input_noise
        replace[:, 0] = False
        noise = paddle.randint(1, self.vocab_size - 1, ys_in.shape, dtype="int64")
        return paddle.where(replace, noise, ys_in)

    def forward(self, memory: paddle.Tensor, memory_lengths: paddle.Tensor, ys_in: paddle.Tensor,
                ys_in_lengths: paddle.Tensor, memory_clock: paddle.Tensor | None = None) -> paddle.Tensor:
        """memory [B, T, d] with [B] valid lengths; ys_in [N, U] (<sos> + tokens, padded) with [N]
        lengths -> logits [N, U, V]. N is a multiple of B: rows r*R..(r+1)*R-1 are hypotheses about
        utterance r (R = 1 in training, the beam in decoding). Position u sees tokens 0..u of its
        own hypothesis only. memory_clock [B, T]: the position of each memory frame when
        memory_position_unit is token (`U2Model.token_clock`)."""
        u = paddle.shape(ys_in)[1]
        pos = paddle.arange(u, dtype="int64")
        key_valid = (pos.unsqueeze(0) < ys_in_lengths.unsqueeze(1)).astype("float32")  # [B, U]
        causal = (pos.unsqueeze(0) <= pos.unsqueeze(1)).astype("float32")  # [U, U]
        tgt_bias = (1.0 - key_valid.unsqueeze(1) * causal.unsqueeze(0)) * NEG_INF  # [B, U, U]
        t = paddle.shape(memory)[1]
        mem_valid = (paddle.arange(t, dtype="int64").unsqueeze(0) < memory_lengths.unsqueeze(1)).astype("float32")
        memory_bias = ((1.0 - mem_valid) * NEG_INF).unsqueeze(1).unsqueeze(1)  # [B, 1, 1, T]
        if self.memory_positions:
            memory = memory + (self.memory_pe[:, :t] if memory_clock is None else sinusoid(memory_clock, self.d))
        x, _ = self.embed(ys_in)
        tgt_bias = tgt_bias.unsqueeze(1)  # [B, 1, U, U]
        for layer in self.decoders:
            x = layer(x, tgt_bias, memory, memory_bias)
        return self.output_layer(self.after_norm(x))
