"""U2 (WeNet/PaddleSpeech `U2Model`): shared encoder, CTC head and attention decoder.

Training loss: ctc_weight * CTC + (1 - ctc_weight) * label-smoothed attention cross-entropy, both
divided by the batch size (PaddleSpeech u2.py, WeNet asr_model.py: length_normalized_loss false).
With a bitransformer decoder (U2++) the attention part is (1 - reverse_weight) * left-to-right +
reverse_weight * right-to-left, the latter on the reversed transcript.
The inference functions are what export converts and what the search algorithms call:
`forward_encoder` (full utterance, with CTC log-probs), `forward_encoder_chunk` (streaming, with
caches), `ctc_activation`, `forward_attention_decoder` (U2++: both directions' log-probs).
"""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_asr.config import AsrConfig
from paddle_asr.data.dataset import IGNORE_ID
from paddle_asr.models.decoder import build_decoder, reverse_tokens
from paddle_asr.models.encoder import Encoder
from paddle_asr.models.fast_cpu_ops import Linear, dropout, fast_log_softmax


class CTC(nn.Layer):
    """`ctc.ctc_lo` as in PaddleSpeech; the loss is summed over the batch and divided by its size.

    blank: the blank unit's id (0 in every published model). norm_by_times: warpctc divides each
    utterance's gradient by its frame count (PaddleSpeech `ctc_grad_norm_type: instance`, used by
    the legacy DeepSpeech2 recipes); the loss value is unchanged.
    """

    def __init__(self, vocab_size: int, encoder_size: int, dropout_rate: float, *, blank: int = 0,
                 norm_by_times: bool = False) -> None:
        super().__init__()
        self.ctc_lo = Linear(encoder_size, vocab_size)
        self.dropout_rate = dropout_rate
        self.blank = blank
        self.norm_by_times = norm_by_times

    def loss(self, hs, hs_lengths, labels, label_lengths) -> paddle.Tensor:
        """Per-utterance CTC losses [B]."""
        logits = self.ctc_lo(dropout(hs, self.dropout_rate, self.training))
        # warpctc normalises the logits itself; labels padded with -1 beyond label_lengths are unused.
        return F.ctc_loss(logits.transpose([1, 0, 2]), labels.astype("int32"), hs_lengths, label_lengths,
                          blank=self.blank, reduction="none", norm_by_times=self.norm_by_times)

    def log_softmax(self, hs: paddle.Tensor) -> paddle.Tensor:
        return fast_log_softmax(self.ctc_lo(hs))


def label_smoothing_loss(
    logits: paddle.Tensor, targets: paddle.Tensor, smoothing: float, normalize_length: bool
) -> paddle.Tensor:
    """KL(smoothed one-hot || softmax(logits)) summed over non-padded positions (PaddleSpeech
    `LabelSmoothingLoss`), divided by the batch size or, with normalize_length, the token count.

    The target puts 1-smoothing on the label and smoothing/(V-1) on every other unit; the KL is
    written in closed form so no [B, U, V] target tensor is built.
    """
    vocab = logits.shape[-1]
    logp = fast_log_softmax(logits)
    ignore = targets == IGNORE_ID
    safe = paddle.where(ignore, paddle.zeros_like(targets), targets)
    confidence, low = 1.0 - smoothing, smoothing / (vocab - 1)
    const = (confidence * math.log(confidence) if confidence > 0 else 0.0) + (
        (vocab - 1) * low * math.log(low) if low > 0 else 0.0)
    label_logp = paddle.take_along_axis(logp, safe.unsqueeze(-1), axis=-1).squeeze(-1)
    kl = const - low * logp.sum(-1) - (confidence - low) * label_logp  # [B, U]
    kl = kl * (1.0 - ignore.astype(kl.dtype))
    denom = (1.0 - ignore.astype(kl.dtype)).sum() if normalize_length else float(logits.shape[0])
    return kl.sum() / denom


class U2Model(nn.Layer):
    def __init__(self, encoder: nn.Layer, decoder: nn.Layer, vocab_size: int, *, ctc_weight: float,
                 lsm_weight: float, length_normalized_loss: bool, ctc_dropout_rate: float = 0.0,
                 reverse_weight: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.ctc = CTC(vocab_size, encoder.output_size, ctc_dropout_rate)
        self.vocab_size = vocab_size
        self.sos = self.eos = vocab_size - 1  # PaddleSpeech layout: <eos> is the last unit
        self.ctc_weight = ctc_weight
        self.lsm_weight = lsm_weight
        self.length_normalized_loss = length_normalized_loss
        # model.decoder.reverse_weight: the right-to-left share of the attention loss (U2++), and
        # what attention rescoring weighs that direction by unless the decode config says otherwise.
        self.reverse_weight = reverse_weight if decoder.bidirectional else 0.0

    def forward(self, feats, feat_lengths, labels, label_lengths, decoding_chunk_size: int | None = None,
                ctc_only: bool = False) -> tuple[paddle.Tensor, dict[str, paddle.Tensor]]:
        """Training loss (mean over the batch) and its parts {"ctc", "att"} for logging (U2++ adds
        the two directions' attention losses "att_l2r" and "att_r2l", of which "att" is the mix).

        The encoder draws random chunks while training (decoding_chunk_size 0) and attends to the
        whole utterance otherwise (the dev loss); pass decoding_chunk_size to fix the mask.
        ctc_only: the CTC loss alone, without running the decoder (training.ctc_only_updates).
        """
        if decoding_chunk_size is None:
            decoding_chunk_size = 0 if self.training else -1
        hs, hs_lengths = self.encoder(feats, feat_lengths, decoding_chunk_size=decoding_chunk_size)
        return self.loss_from_encoder(hs, hs_lengths, labels, label_lengths, ctc_only=ctc_only)

    def loss_from_encoder(self, hs, hs_lengths, labels, label_lengths,
                          ctc_only: bool = False) -> tuple[paddle.Tensor, dict[str, paddle.Tensor]]:
        """`forward`'s loss and parts from the encoder's output [B, T', d] and lengths: the dev set's
        evaluation reads the CTC hypotheses off the same encoder run (`forward_encoder`)."""
        batch = hs.shape[0]
        loss_ctc = self.ctc.loss(hs, hs_lengths, labels, label_lengths).sum() / batch
        if ctc_only or self.ctc_weight == 1.0:
            return loss_ctc, {"ctc": loss_ctc}
        labels = labels.astype("int64")
        clock = self.token_clock(hs)
        parts = {"ctc": loss_ctc, "att": self._attention_loss(self.decoder, hs, hs_lengths, labels, label_lengths,
                                                                clock)}
        if self.reverse_weight > 0:
            r_labels = reverse_tokens(labels, label_lengths, IGNORE_ID)
            parts["att_l2r"] = parts["att"]
            parts["att_r2l"] = self._attention_loss(self.decoder.forward_right, hs, hs_lengths, r_labels,
                                                    label_lengths, clock)
            parts["att"] = (1.0 - self.reverse_weight) * parts["att_l2r"] + self.reverse_weight * parts["att_r2l"]
        loss = self.ctc_weight * loss_ctc + (1.0 - self.ctc_weight) * parts["att"]
        return loss, parts

    def _attention_loss(self, decoder, hs, hs_lengths, labels, label_lengths, clock) -> paddle.Tensor:
        """Label-smoothed loss of one decoder direction on `labels` (the transcript, or reversed)."""
        ys_in, ys_out = self.add_sos_eos(labels, label_lengths)
        ys_in = self.decoder.noisy_inputs(ys_in) if self.training else ys_in
        logits = decoder(hs, hs_lengths, ys_in, label_lengths + 1, clock)
        return label_smoothing_loss(logits, ys_out, self.lsm_weight, self.length_normalized_loss)

    def add_sos_eos(self, labels: paddle.Tensor, label_lengths: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """labels [B, L] padded with -1 -> decoder input `<sos> y` padded with <eos>, and target
        `y <eos>` padded with -1 (PaddleSpeech `add_sos_eos`)."""
        b = labels.shape[0]
        sos = paddle.full([b, 1], self.sos, dtype="int64")
        labels_eos = paddle.where(labels == IGNORE_ID, paddle.full_like(labels, self.eos), labels)
        ys_in = paddle.concat([sos, labels_eos], axis=1)
        padded = paddle.concat([labels, paddle.full([b, 1], IGNORE_ID, dtype="int64")], axis=1)
        pos = paddle.arange(padded.shape[1], dtype="int64").unsqueeze(0)
        at_end = pos == label_lengths.astype("int64").unsqueeze(1)
        ys_out = paddle.where(at_end, paddle.full_like(padded, self.eos), padded)
        return ys_in, ys_out

    # ---- inference functions (exported) ----

    def forward_encoder(self, feats: paddle.Tensor, feat_lengths: paddle.Tensor):
        """Full-utterance encoder: features [B, T, D], lengths [B] -> (encoder_out [B, T', d],
        lengths [B], CTC log-probs [B, T', V]). The CTC head is folded in: every method needs it."""
        hs, hs_lengths = self.encoder(feats, feat_lengths, decoding_chunk_size=-1)
        return hs, hs_lengths, self.ctc.log_softmax(hs)

    def forward_encoder_chunk(self, xs, offsets, att_cache, cache_lengths, cnn_cache):
        """The next chunk of B streams with their caches (`Encoder.forward_chunk`)."""
        return self.encoder.forward_chunk(xs, offsets, att_cache, cache_lengths, cnn_cache)

    def ctc_activation(self, encoder_out: paddle.Tensor) -> paddle.Tensor:
        return self.ctc.log_softmax(encoder_out)

    def forward_attention_decoder(self, hyps: paddle.Tensor, hyps_lengths: paddle.Tensor,
                                  encoder_out: paddle.Tensor, encoder_lengths: paddle.Tensor):
        """hyps [N, U] = `<sos> tokens` padded, lengths [N] counting <sos>; encoder_out [B, T, d] with
        lengths [B], N a multiple of B (N/B hypotheses per utterance, grouped by utterance)
        -> decoder log-probs [N, U, V] (row u scores the token after position u).

        A bitransformer (U2++) returns (left-to-right, right-to-left) log-probs, both [N, U, V], as
        PaddleSpeech's and WeNet's exported decoders (r_decoder_out): the right-to-left decoder
        reads `<sos> reversed(tokens)`, so its row u scores token n-1-u of an n-token hypothesis
        and row n scores <eos>."""
        clock = self.token_clock(encoder_out)
        left = fast_log_softmax(self.decoder(encoder_out, encoder_lengths, hyps, hyps_lengths, clock))
        if not self.decoder.bidirectional:
            return left
        r_hyps = paddle.concat([hyps[:, :1], reverse_tokens(hyps[:, 1:], hyps_lengths - 1, self.eos)], axis=1)
        right = self.decoder.forward_right(encoder_out, encoder_lengths, r_hyps, hyps_lengths, clock)
        return left, fast_log_softmax(right)

    def forward_left_decoder(self, hyps: paddle.Tensor, hyps_lengths: paddle.Tensor, encoder_out: paddle.Tensor,
                             encoder_lengths: paddle.Tensor) -> paddle.Tensor:
        """The left-to-right log-probs alone, of any decoder type: what attention beam search reads
        (a bitransformer's right-to-left half is not run)."""
        return fast_log_softmax(self.decoder(encoder_out, encoder_lengths, hyps, hyps_lengths,
                                             self.token_clock(encoder_out)))

    def forward_decoder_step(self, tokens: paddle.Tensor, att_cache: paddle.Tensor, encoder_out: paddle.Tensor,
                             encoder_lengths: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Incremental attention decoding, one token per row: the left-to-right decoder's log-probs
        [N, V] of the next token and the new keys and values [L, N, H, 1, 2*d_k]
        (`TransformerDecoder.forward_step` has the cache layout). Attention beam search grows a
        prefix by one token a step, and this computes that token alone instead of the whole prefix."""
        decoder = self.decoder.left_decoder if self.decoder.bidirectional else self.decoder
        logits, kv = decoder.forward_step(encoder_out, encoder_lengths, tokens, att_cache,
                                          self.token_clock(encoder_out))
        return fast_log_softmax(logits), kv

    def decoder_cache_shape(self) -> tuple[int, int, int]:
        """(layers, heads, 2*d_k) of `forward_decoder_step`'s cache."""
        return (self.decoder.left_decoder if self.decoder.bidirectional else self.decoder).cache_shape()

    def token_clock(self, encoder_out: paddle.Tensor) -> paddle.Tensor | None:
        """[B, T]: how many units the CTC branch has emitted by each frame, each frame counting its
        own half (the running sum of 1 - P(blank)); None unless model.decoder.memory_position_unit
        is token. No gradient flows through it: it is where the decoder looks, not what it learns."""
        if self.decoder.memory_position_unit != "token":
            return None
        emitted = 1.0 - paddle.exp(self.ctc.log_softmax(encoder_out.detach())[:, :, self.ctc.blank])
        return paddle.cumsum(emitted, axis=1) - 0.5 * emitted


def build_u2(config: AsrConfig, cmvn: tuple[np.ndarray, np.ndarray]) -> U2Model:
    """The U2 network of a resolved config (`model.encoder_type`, `encoder`, `decoder` sections)."""
    m = config.model
    encoder = Encoder(config.input_dim, m.encoder, m.encoder_type, cmvn)
    decoder = build_decoder(config.vocab_size, m.encoder.output_size, m.decoder)
    return U2Model(encoder, decoder, config.vocab_size, ctc_weight=m.ctc_weight, lsm_weight=m.lsm_weight,
                   length_normalized_loss=m.length_normalized_loss, ctc_dropout_rate=m.ctc_dropout_rate,
                   reverse_weight=m.decoder.reverse_weight)
