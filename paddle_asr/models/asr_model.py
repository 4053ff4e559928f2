"""Encoder + CTC head: the training loss and the inference function that export converts."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn


class CTC(nn.Layer):
    """`ctc.ctc_lo` as in PaddleSpeech; the loss is summed over the batch and divided by its size."""

    def __init__(self, vocab_size: int, encoder_size: int, dropout_rate: float) -> None:
        super().__init__()
        self.ctc_lo = nn.Linear(encoder_size, vocab_size)
        self.dropout_rate = dropout_rate

    def loss(self, hs, hs_lengths, labels, label_lengths) -> paddle.Tensor:
        logits = self.ctc_lo(F.dropout(hs, p=self.dropout_rate, training=self.training))
        # warpctc normalises the logits itself; labels padded with -1 beyond label_lengths are unused.
        loss = F.ctc_loss(
            logits.transpose([1, 0, 2]), labels, hs_lengths, label_lengths, blank=0, reduction="none"
        )
        return loss

    def log_softmax(self, hs: paddle.Tensor) -> paddle.Tensor:
        return F.log_softmax(self.ctc_lo(hs), axis=-1)


class CTCModel(nn.Layer):
    def __init__(self, encoder: nn.Layer, vocab_size: int, ctc_dropout_rate: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.ctc = CTC(vocab_size, encoder.output_size, ctc_dropout_rate)
        self.vocab_size = vocab_size

    def forward(self, feats, feat_lengths, labels, label_lengths) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Returns (mean loss over the batch, per-utterance losses) for skipping non-finite batches."""
        hs, hs_lengths = self.encoder(feats, feat_lengths)
        per_utt = self.ctc.loss(hs, hs_lengths, labels.astype("int32"), label_lengths)
        return per_utt.sum() / feats.shape[0], per_utt

    def forward_infer(self, feats: paddle.Tensor, feat_lengths: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """The exported function: features [B, T, D] and lengths [B] -> CTC log-probs and lengths."""
        hs, hs_lengths = self.encoder(feats, feat_lengths)
        return self.ctc.log_softmax(hs), hs_lengths
