"""Dynamic-graph models as decoding backends (stage 3): NumPy in, NumPy out, no gradients.

One class per model family: U2 (CTC + attention decoder, streaming with attention and convolution
caches) and DeepSpeech2 (CTC only, streaming with recurrent states); `paddle_asr.families.dygraph_backend(model)`
picks the one for a built network.
"""

from __future__ import annotations

import numpy as np
import paddle

from paddle_asr.errors import AsrError
from paddle_asr.models.deepspeech2 import (
    DeepSpeech2Model,
    DeepSpeech2StreamState,
    gather_rnn_states,
    scatter_rnn_states,
)
from paddle_asr.models.encoder import (
    CHUNK_CACHE_INPUTS,
    U2StreamState,
    chunk_output_frames,
    gather_stream_states,
    scatter_stream_states,
)
from paddle_asr.models.u2 import U2Model


class DygraphBackend:
    has_decoder = True

    def __init__(self, model: U2Model) -> None:
        model.eval()
        self.model = model
        self.sos, self.eos = model.sos, model.eos
        self.subsampling_rate = model.encoder.embed.subsampling_rate
        self.right_context = model.encoder.embed.right_context
        self.supports_streaming = model.encoder.supports_streaming
        self.skip_finished = True  # the dynamic graph builds nothing per shape: fewer rows is faster
        self.bidirectional, self.reverse_weight = model.decoder.bidirectional, model.reverse_weight
        self.decoder_step_cache = model.decoder_cache_shape()

    def encode(self, feats, lengths):
        with paddle.no_grad():
            out = self.model.forward_encoder(paddle.to_tensor(feats), paddle.to_tensor(lengths, dtype="int64"))
        return tuple(t.numpy() for t in out)

    def new_stream_state(self) -> U2StreamState:
        if not self.supports_streaming:
            raise AsrError("this model cannot stream: it was not trained with chunk masks and causal convolutions")
        return U2StreamState.new(*self.model.encoder.cache_shapes())

    def encode_chunks(self, xs: np.ndarray, states: list[U2StreamState], required_cache_size: int
                      ) -> tuple[np.ndarray, list[U2StreamState]]:
        enc = self.model.encoder
        frames = chunk_output_frames(xs.shape[1], self.subsampling_rate, self.right_context)
        feeds = gather_stream_states(states, frames, enc.max_output_frames)
        with paddle.no_grad():
            y, att, cnn = self.model.forward_encoder_chunk(
                paddle.to_tensor(np.asarray(xs, np.float32)), *(paddle.to_tensor(feeds[k]) for k in CHUNK_CACHE_INPUTS))
        return y.numpy(), scatter_stream_states(states, y.shape[1], att.numpy(), cnn.numpy(), required_cache_size)

    def ctc_activation(self, encoder_out):
        with paddle.no_grad():
            return self.model.ctc_activation(paddle.to_tensor(encoder_out)).numpy()

    def decode(self, hyps, hyps_lengths, encoder_out, encoder_lengths):
        return self._decoder(self.model.forward_left_decoder, hyps, hyps_lengths, encoder_out, encoder_lengths)

    def decode_bidirectional(self, hyps, hyps_lengths, encoder_out, encoder_lengths):
        left, right = self._decoder(self.model.forward_attention_decoder, hyps, hyps_lengths, encoder_out,
                                    encoder_lengths)
        return left, right

    def decode_step(self, tokens, att_cache, encoder_out, encoder_lengths):
        with paddle.no_grad():
            logp, kv = self.model.forward_decoder_step(
                paddle.to_tensor(tokens, dtype="int64"), paddle.to_tensor(att_cache), paddle.to_tensor(encoder_out),
                paddle.to_tensor(encoder_lengths, dtype="int64"))
        return logp.numpy(), kv.numpy()

    @staticmethod
    def _decoder(method, hyps, hyps_lengths, encoder_out, encoder_lengths):
        with paddle.no_grad():
            out = method(paddle.to_tensor(hyps, dtype="int64"), paddle.to_tensor(hyps_lengths, dtype="int64"),
                         paddle.to_tensor(encoder_out), paddle.to_tensor(encoder_lengths, dtype="int64"))
        return tuple(t.numpy() for t in out) if isinstance(out, tuple) else out.numpy()


class DeepSpeech2DygraphBackend:
    """CTC-only: the recognizer offers greedy, prefix beam and LM beam search."""

    has_decoder = bidirectional = False
    sos = eos = decoder_step_cache = None
    reverse_weight = 0.0
    skip_finished = True

    def __init__(self, model: DeepSpeech2Model) -> None:
        model.eval()
        self.model = model
        self.subsampling_rate = model.encoder.subsampling_rate
        self.right_context = model.encoder.right_context
        self.supports_streaming = model.encoder.supports_streaming

    def encode(self, feats, lengths):
        with paddle.no_grad():
            out = self.model.forward_encoder(paddle.to_tensor(feats), paddle.to_tensor(lengths, dtype="int64"))
        return tuple(t.numpy() for t in out)

    def new_stream_state(self) -> DeepSpeech2StreamState:
        return self.model.new_stream_state()

    def encode_chunks(self, xs: np.ndarray, states: list[DeepSpeech2StreamState], required_cache_size: int
                      ) -> tuple[np.ndarray, list[DeepSpeech2StreamState]]:
        """The RNN keeps all of its history in fixed-size states: required_cache_size does not apply."""
        feats, lengths, h, c = gather_rnn_states(xs, states)
        with paddle.no_grad():
            out, out_lengths, h, c = self.model.encoder(*(paddle.to_tensor(a) for a in (feats, lengths, h, c)))
        out = out.numpy()[:, : int(out_lengths.numpy().max())]
        return out, scatter_rnn_states(feats, h.numpy(), None if self.model.encoder.use_gru else c.numpy())

    def ctc_activation(self, encoder_out):
        with paddle.no_grad():
            return self.model.ctc_activation(paddle.to_tensor(encoder_out)).numpy()
