"""Dynamic-graph models as decoding backends (stage 3): NumPy in, NumPy out, no gradients.

One class per model family: U2 (CTC + attention decoder, streaming with attention and convolution
caches) and DeepSpeech2 (CTC only, streaming with recurrent states); `paddle_asr.families.dygraph_backend(model)`
picks the one for a built network.
"""

from __future__ import annotations

import numpy as np
import paddle

from paddle_asr.models.deepspeech2 import DeepSpeech2Model
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

    def encode(self, feats, lengths):
        with paddle.no_grad():
            out = self.model.forward_encoder(paddle.to_tensor(feats), paddle.to_tensor(lengths, dtype="int64"))
        return tuple(t.numpy() for t in out)

    def encode_stream(self, feats: np.ndarray, chunk_size: int, num_left_chunks: int) -> np.ndarray:
        from paddle_asr.decode.recognizer import encode_streaming

        return encode_streaming(self, feats, chunk_size, num_left_chunks)

    def encode_chunk(self, xs, offset, required_cache_size, att_cache, cnn_cache):
        with paddle.no_grad():
            out = self.model.forward_encoder_chunk(paddle.to_tensor(xs), int(offset), int(required_cache_size),
                                                   paddle.to_tensor(att_cache), paddle.to_tensor(cnn_cache))
        return tuple(t.numpy() for t in out)

    def initial_caches(self) -> tuple[np.ndarray, np.ndarray]:
        return self.model.encoder.initial_caches()

    def ctc_activation(self, encoder_out):
        with paddle.no_grad():
            return self.model.ctc_activation(paddle.to_tensor(encoder_out)).numpy()

    def decode(self, hyps, hyps_lengths, encoder_out, encoder_lengths):
        with paddle.no_grad():
            out = self.model.forward_attention_decoder(
                paddle.to_tensor(hyps, dtype="int64"), paddle.to_tensor(hyps_lengths, dtype="int64"),
                paddle.to_tensor(encoder_out), paddle.to_tensor(encoder_lengths, dtype="int64"))
        return out.numpy()


class DeepSpeech2DygraphBackend:
    """CTC-only: the recognizer offers greedy, prefix beam and LM beam search."""

    has_decoder = False
    sos = eos = None
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

    def encode_stream(self, feats: np.ndarray, chunk_size: int, num_left_chunks: int) -> np.ndarray:
        """Chunks of `chunk_size` output frames with the recurrent states carried over (the RNN
        keeps all of its history: num_left_chunks does not apply)."""
        with paddle.no_grad():
            hs, _ = self.model.forward_chunk_by_chunk(paddle.to_tensor(feats[None]),
                                                      paddle.to_tensor([feats.shape[0]], dtype="int64"),
                                                      chunk_size, encoder_out=True)
        return hs.numpy()

    def ctc_activation(self, encoder_out):
        with paddle.no_grad():
            return self.model.ctc_activation(paddle.to_tensor(encoder_out)).numpy()
