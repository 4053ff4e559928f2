"""Attention decoders in PaddleSpeech's layouts (docs/paddlespeech.md): `TransformerDecoder` (left to
right) and `BiTransformerDecoder` (U2++: a left-to-right and a right-to-left one side by side)."""

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

    def forward_step(self, x, cache, cache_bias, memory, memory_bias):
        """The newest position x [N, 1, d] of each row, attending to its earlier positions' keys and
        values (cache [N, H, C, 2*d_k]) and its own -> (output [N, 1, d], its keys/values [N, H, 1, 2*d_k])."""
        y = self.norm1(x)
        attended, kv = self.self_attn(y, y, y, cache_bias, cache=cache)
        x = x + attended
        x = x + self.src_attn.forward_shared_memory(self.norm2(x), memory, memory_bias)
        return x + self.feed_forward(self.norm3(x)), kv


class TransformerDecoder(nn.Layer):
    """num_blocks: the config's unless given (the right-to-left half of a bitransformer has r_num_blocks)."""

    bidirectional = False

    def __init__(self, vocab_size: int, d: int, conf: DecoderConfig, num_blocks: int | None = None) -> None:
        super().__init__()
        if not conf.normalize_before:
            raise AsrError("model.decoder.normalize_before: false is not supported (every published recipe uses true)")
        self.embed = nn.Sequential(
            nn.Embedding(vocab_size, d), PositionalEncoding(d, conf.positional_dropout_rate, relative=False)
        )
        blocks = conf.num_blocks if num_blocks is None else num_blocks
        self.decoders = nn.LayerList([DecoderLayer(d, conf) for _ in range(blocks)])
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
        memory, memory_bias = self._memory(memory, memory_lengths, memory_clock)
        x, _ = self.embed(ys_in)
        tgt_bias = tgt_bias.unsqueeze(1)  # [B, 1, U, U]
        for layer in self.decoders:
            x = layer(x, tgt_bias, memory, memory_bias)
        return self.output_layer(self.after_norm(x))

    def _memory(self, memory, memory_lengths, memory_clock):
        """(memory with its positions when model.decoder.memory_positions, bias [B, 1, 1, T] masking
        the frames past each length)."""
        t = paddle.shape(memory)[1]
        mem_valid = (paddle.arange(t, dtype="int64").unsqueeze(0) < memory_lengths.unsqueeze(1)).astype("float32")
        memory_bias = ((1.0 - mem_valid) * NEG_INF).unsqueeze(1).unsqueeze(1)
        if self.memory_positions:
            memory = memory + (self.memory_pe[:, :t] if memory_clock is None else sinusoid(memory_clock, self.d))
        return memory, memory_bias

    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, heads, 2*d_k) of `forward_step`'s cache."""
        attn = self.decoders[0].self_attn
        return len(self.decoders), attn.h, 2 * attn.d_k

    def forward_step(self, memory: paddle.Tensor, memory_lengths: paddle.Tensor, tokens: paddle.Tensor,
                     att_cache: paddle.Tensor, memory_clock: paddle.Tensor | None = None
                     ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """One step of incremental decoding: the logits [N, V] of the token after `tokens` [N, 1], and
        that token's keys and values [L, N, H, 1, 2*d_k] in every layer (eval mode).

        att_cache [L, N, H, C, 2*d_k]: entry 0 is padding (masked out, so that the first step needs no
        empty tensor), entries 1..C-1 the keys and values of each row's positions 0..C-2; `tokens`
        stand at position C-1. Rows are grouped by utterance over memory [B, T, d] as in `forward`,
        and the logits equal `forward`'s at that position for the same prefix."""
        memory, memory_bias = self._memory(memory, memory_lengths, memory_clock)
        c = paddle.shape(att_cache)[3]
        position = paddle.full([1, 1], c - 1, dtype="int64")
        x = self.embed[0](tokens) * self.embed[1].xscale + self.embed[1].at(position)
        cache_bias = (paddle.arange(c + 1, dtype="int64") == 0).astype("float32") * NEG_INF  # [C + 1]
        new_kv = []
        for i, layer in enumerate(self.decoders):
            x, kv = layer.forward_step(x, att_cache[i], cache_bias, memory, memory_bias)
            new_kv.append(kv)
        return self.output_layer(self.after_norm(x))[:, 0], paddle.stack(new_kv)


class BiTransformerDecoder(nn.Layer):
    """U2++'s decoder (PaddleSpeech `BiTransformerDecoder`, parameters `left_decoder.*` and
    `right_decoder.*`): two decoders with their own embeddings and output layers over the same
    encoder output, the right-to-left one fed `<sos> reversed(tokens)`. Called like a
    `TransformerDecoder` it is the left-to-right one, which attention beam search reads alone;
    `forward_right` runs the other (training loss, attention rescoring)."""

    bidirectional = True

    def __init__(self, vocab_size: int, d: int, conf: DecoderConfig) -> None:
        super().__init__()
        self.left_decoder = TransformerDecoder(vocab_size, d, conf)
        self.right_decoder = TransformerDecoder(vocab_size, d, conf, num_blocks=conf.r_num_blocks)
        self.memory_position_unit = self.left_decoder.memory_position_unit

    def noisy_inputs(self, ys_in: paddle.Tensor) -> paddle.Tensor:
        return self.left_decoder.noisy_inputs(ys_in)

    def forward(self, memory: paddle.Tensor, memory_lengths: paddle.Tensor, ys_in: paddle.Tensor,
                ys_in_lengths: paddle.Tensor, memory_clock: paddle.Tensor | None = None) -> paddle.Tensor:
        """The left-to-right decoder's logits (`TransformerDecoder.forward`)."""
        return self.left_decoder(memory, memory_lengths, ys_in, ys_in_lengths, memory_clock)

    def forward_right(self, memory: paddle.Tensor, memory_lengths: paddle.Tensor, r_ys_in: paddle.Tensor,
                      ys_in_lengths: paddle.Tensor, memory_clock: paddle.Tensor | None = None) -> paddle.Tensor:
        """The right-to-left decoder's logits for `<sos> reversed(tokens)` rows (`reverse_tokens`)."""
        return self.right_decoder(memory, memory_lengths, r_ys_in, ys_in_lengths, memory_clock)


def reverse_tokens(tokens: paddle.Tensor, lengths: paddle.Tensor, pad: int) -> paddle.Tensor:
    """tokens [B, L] whose first lengths[b] entries count -> each row's entries reversed, the rest
    `pad` (PaddleSpeech `reverse_pad_list`); traceable, for the exported decoder."""
    pos = paddle.arange(paddle.shape(tokens)[1], dtype="int64").unsqueeze(0)
    n = lengths.astype("int64").unsqueeze(1)
    # where, not clip: Paddle Inference fuses a clip into oneDNN even where oneDNN is off (the decoder)
    valid, index = pos < n, n - 1 - pos
    reversed_ = paddle.take_along_axis(tokens, paddle.where(valid, index, paddle.zeros_like(index)), axis=1)
    return paddle.where(valid, reversed_, paddle.full_like(tokens, pad))


def build_decoder(vocab_size: int, d: int, conf: DecoderConfig) -> nn.Layer:
    """The decoder `model.decoder.type` names."""
    cls = BiTransformerDecoder if conf.type == "bitransformer" else TransformerDecoder
    return cls(vocab_size, d, conf)
