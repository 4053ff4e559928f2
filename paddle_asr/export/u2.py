"""What export writes for a U2 model (shared encoder, CTC, attention decoder), and its runtime:

    <out>/encoder/         forward_encoder: feats [B, T, D], feats_lengths [B]
                           -> encoder_out [B, T', d], encoder_lengths [B], ctc_log_probs [B, T', V]
    <out>/encoder_chunk/   forward_encoder_chunk (streaming models only): xs [1, T, D], offset [1],
                           required_cache_size [1], att_cache [L, H, t, 2*d_k], cnn_cache [L, 1, d, k-1]
                           -> chunk_out [1, t', d], att_cache, cnn_cache
    <out>/ctc_activation/  encoder_out [B, T', d] -> ctc_log_probs [B, T', V]
    <out>/decoder/         forward_attention_decoder: hyps [N, U], hyps_lengths [N], encoder_out
                           [N, T', d], encoder_lengths [N] -> decoder log-probs [N, U, V]

CMVN is inside both encoders (raw fbank in). `U2ExportedBackend` runs such a bundle: CTC and
attention decoder, streaming with attention and convolution caches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from paddle.static import InputSpec

from paddle_asr.config import AsrConfig
from paddle_asr.decode.recognizer import chunk_windows, encode_streaming
from paddle_asr.export.backend import ExportedBackend, pad_axis, require_meta
from paddle_asr.export.common import PARITY_ATOL, PARITY_LENGTHS, ExportError, RuntimeFunction
from paddle_asr.export.inference import GpuInference, Predictor
from paddle_asr.models.u2 import U2Model

# Decoder inputs are padded too (hypothesis length to 8 tokens, encoder frames to 16): every new
# shape costs oneDNN a primitive build, and attention beam search grows the hypotheses one token
# per step. Padding is masked inside the model, so results are unchanged.
TOKEN_BUCKET = 8
FRAME_BUCKET = 16


def runtime_functions(model, feat_dim: int) -> list[RuntimeFunction]:
    """The functions a U2 runtime needs; `encoder_chunk` only when the model can stream."""
    enc = model.encoder
    d, layers, heads = enc.output_size, len(enc.encoders), enc.conf.attention_heads
    fns = [
        RuntimeFunction("encoder", "forward_encoder", (
            InputSpec([None, None, feat_dim], "float32", "feats"), InputSpec([None], "int64", "feats_lengths"))),
        RuntimeFunction("ctc_activation", "ctc_activation", (InputSpec([None, None, d], "float32", "encoder_out"),)),
        RuntimeFunction("decoder", "forward_attention_decoder", (
            InputSpec([None, None], "int64", "hyps"), InputSpec([None], "int64", "hyps_lengths"),
            InputSpec([None, None, d], "float32", "encoder_out"), InputSpec([None], "int64", "encoder_lengths"))),
    ]
    if enc.supports_streaming:
        fns.append(RuntimeFunction("encoder_chunk", "forward_encoder_chunk", (
            InputSpec([1, None, feat_dim], "float32", "xs"), InputSpec([1], "int64", "offset"),
            InputSpec([1], "int64", "required_cache_size"),
            InputSpec([layers, heads, None, 2 * (d // heads)], "float32", "att_cache"),
            InputSpec([layers, 1, d, max(enc.cnn_cache_frames, 1)], "float32", "cnn_cache"))))
    return fns


def parity_inputs(model, feat_dim: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random but realistic inputs for each function, to compare dygraph and the predictor."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(PARITY_LENGTHS, dtype=np.int64)
    feats = rng.standard_normal((len(lengths), int(lengths.max()), feat_dim)).astype(np.float32) * 3 + 10
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    enc_len = np.asarray([int(model.encoder.output_length(int(n))) for n in lengths], np.int64)
    d = model.encoder.output_size
    enc_out = rng.standard_normal((len(lengths), int(enc_len.max()), d)).astype(np.float32)
    # Three hypotheses per utterance (rows grouped by utterance), as beam search feeds the decoder.
    hyps = rng.integers(1, model.vocab_size - 1, (3 * len(lengths), 7)).astype(np.int64)
    hyps[:, 0] = model.sos
    hyps_lengths = np.asarray([7, 4, 1, 6, 2, 7], np.int64)
    for i, n in enumerate(hyps_lengths):
        hyps[i, n:] = model.eos
    return {
        "encoder": {"feats": feats, "feats_lengths": lengths},
        "ctc_activation": {"encoder_out": enc_out},
        "decoder": {"hyps": hyps, "hyps_lengths": hyps_lengths, "encoder_out": enc_out, "encoder_lengths": enc_len},
    }


def check_streaming_parity(model, program_dir: Path, feat_dim: int) -> float:
    """Three chunks through the exported `encoder_chunk` against the dygraph `forward_encoder_chunk`."""
    enc = model.encoder
    sub, right_context, chunk = enc.embed.subsampling_rate, enc.embed.right_context, 4
    rng = np.random.default_rng(1)
    num_frames = 3 * chunk * sub + right_context + 1  # three chunks
    feats = (rng.standard_normal((1, num_frames, feat_dim)) * 3 + 10).astype(np.float32)
    predictor = Predictor(program_dir, streaming=True)
    att, cnn = enc.initial_caches()
    att_d, cnn_d = paddle.to_tensor(att), paddle.to_tensor(cnn)
    offset, worst = 0, 0.0
    for start, end in chunk_windows(num_frames, sub, right_context, chunk):
        xs = feats[:, start:end]
        y, att, cnn = predictor.run({"xs": xs, "offset": np.array([offset], np.int64),
                                     "required_cache_size": np.array([-1], np.int64),
                                     "att_cache": att, "cnn_cache": cnn})
        with paddle.no_grad():
            y_d, att_d, cnn_d = model.forward_encoder_chunk(paddle.to_tensor(xs), offset, -1, att_d, cnn_d)
        worst = max(worst, float(np.abs(y - y_d.numpy()).max()), float(np.abs(att - att_d.numpy()).max()))
        offset += y.shape[1]
    if not np.isfinite(worst) or worst >= PARITY_ATOL:
        raise ExportError(f"{program_dir} disagrees with the dynamic graph chunk by chunk: max |diff| = {worst:.3g}")
    return worst


def bundle_meta(config: AsrConfig, model: U2Model) -> dict:
    """The meta.json entries a U2 runtime needs (see U2ExportedBackend)."""
    enc = model.encoder
    att_cache, cnn_cache = enc.initial_caches()
    return {
        "encoder_type": config.model.encoder_type,
        "sos": model.sos,
        "eos": model.eos,
        "subsampling_rate": enc.embed.subsampling_rate,
        "right_context": enc.embed.right_context,
        "min_input_frames": enc.embed.right_context + 1,
        "supports_streaming": enc.supports_streaming,
        "att_cache_shape": list(att_cache.shape),
        "cnn_cache_shape": list(cnn_cache.shape),
    }


class U2ExportedBackend(ExportedBackend):
    """A U2 bundle: CTC and attention decoder, and for a streaming model chunk-by-chunk encoding
    through `encoder_chunk` with attention and convolution caches."""

    has_decoder = True

    def __init__(self, model_dir: Path, meta: dict, *, num_threads: int = 2,
                 gpu: GpuInference | None = None) -> None:
        require_meta(model_dir, meta, ("functions", "sos", "eos", "subsampling_rate", "right_context",
                                   "att_cache_shape", "cnn_cache_shape"))
        super().__init__(model_dir, meta, num_threads=num_threads, gpu=gpu)
        self.sos, self.eos = int(meta["sos"]), int(meta["eos"])
        self.subsampling_rate = int(meta["subsampling_rate"])
        self.right_context = int(meta["right_context"])
        self.supports_streaming = bool(meta.get("supports_streaming")) and (self.model_dir / "encoder_chunk").is_dir()
        # The decoder meets a new input shape at almost every call (hypothesis count and length,
        # encoder length), and oneDNN builds its kernels per shape, which costs far more than
        # running them (bench/RESULTS.md, "Figures formerly in code comments"). So the FP32 decoder
        # runs on Paddle's plain CPU kernels, and utterances whose beams all ended leave the batch.
        self.skip_finished = True
        self._att_cache_shape = tuple(meta["att_cache_shape"])
        self._cnn_cache_shape = tuple(meta["cnn_cache_shape"])
        self._decoder = self._load("decoder", use_mkldnn="decoder" in self._int8_functions)
        self._chunk = self._load("encoder_chunk", streaming=True) if self.supports_streaming else None

    def encode_stream(self, feats: np.ndarray, chunk_size: int, num_left_chunks: int) -> np.ndarray:
        """`chunk_windows` through `encoder_chunk` with attention and convolution caches."""
        return encode_streaming(self, feats, chunk_size, num_left_chunks)

    def encode_chunk(self, xs, offset, required_cache_size, att_cache, cnn_cache):
        return tuple(self._chunk.run({
            "xs": np.asarray(xs, np.float32), "offset": np.array([offset], np.int64),
            "required_cache_size": np.array([required_cache_size], np.int64),
            "att_cache": att_cache, "cnn_cache": cnn_cache}))

    def initial_caches(self) -> tuple[np.ndarray, np.ndarray]:
        layers, heads, _, width = self._att_cache_shape
        return np.zeros((layers, heads, 0, width), np.float32), np.zeros(self._cnn_cache_shape, np.float32)

    def decode(self, hyps, hyps_lengths, encoder_out, encoder_lengths):
        u = hyps.shape[1]
        feeds = {
            "hyps": pad_axis(np.asarray(hyps, np.int64), 1, TOKEN_BUCKET, value=self.eos),
            "hyps_lengths": np.asarray(hyps_lengths, np.int64),
            "encoder_out": pad_axis(np.asarray(encoder_out, np.float32), 1, FRAME_BUCKET),
            "encoder_lengths": np.asarray(encoder_lengths, np.int64),
        }
        return self._decoder.run(feeds)[0][:, :u]
