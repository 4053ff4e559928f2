"""What export writes for a U2 model (shared encoder, CTC, attention decoder), and its runtime:

    <out>/encoder/         forward_encoder: feats [B, T, D], feats_lengths [B]
                           -> encoder_out [B, T', d], encoder_lengths [B], ctc_log_probs [B, T', V]
    <out>/encoder_chunk/   forward_encoder_chunk (streaming models only), the next chunk of B streams:
                           xs [B, W, D], offsets [B], att_cache [L, B, H, C, 2*d_k] (each stream's
                           cache right-aligned, left-padded), cache_lengths [B], cnn_cache [L, B, d, k-1]
                           -> chunk_out [B, t', d], att_cache [L, B, H, t', 2*d_k] (the chunk's own), cnn_cache
    <out>/ctc_activation/  encoder_out [B, T', d] -> ctc_log_probs [B, T', V]
    <out>/decoder_step/    forward_decoder_step: tokens [N, 1], att_cache [L, N, H, C, 2*d_k] (a
                           padding entry, then each row's earlier positions), encoder_out [B, T', d],
                           encoder_lengths [B] -> the next token's log-probs [N, V] and the new keys
                           and values [L, N, H, 1, 2*d_k] (incremental attention beam search)
    <out>/decoder/         forward_attention_decoder: hyps [N, U], hyps_lengths [N], encoder_out
                           [N, T', d], encoder_lengths [N] -> decoder log-probs [N, U, V]; a U2++
                           (bitransformer) decoder also the right-to-left ones [N, U, V], as WeNet's
                           and PaddleSpeech's exports return r_decoder_out (meta bidirectional_decoder)

CMVN is inside both encoders (raw fbank in). `U2ExportedBackend` runs such a bundle: CTC and
attention decoder, streaming with per-stream attention and convolution caches that it gathers into
one `encoder_chunk` call for many streams and scatters back (`models.encoder.U2StreamState`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from paddle.static import InputSpec

from paddle_asr.config import AsrConfig
from paddle_asr.decode.dygraph_backend import DygraphBackend
from paddle_asr.decode.recognizer import chunk_windows
from paddle_asr.errors import AsrError
from paddle_asr.export.backend import (
    ENCODER_CHUNK_VERSION,
    ExportedBackend,
    Streams,
    pad_axis,
    require_chunk_version,
    require_meta,
)
from paddle_asr.export.common import (
    PARITY_ATOL,
    PARITY_LENGTHS,
    ExportError,
    RuntimeFunction,
    batched_chunk_diff,
    stream_state_diff,
)
from paddle_asr.export.inference import GpuInference, Predictor
from paddle_asr.models.encoder import (
    FeedBuffer,
    U2StreamState,
    chunk_output_frames,
    gather_stream_states,
    scatter_stream_states,
)
from paddle_asr.models.u2 import U2Model

# Decoder inputs are padded too (hypothesis length to 8 tokens, encoder frames to 16): every new
# shape costs oneDNN a primitive build, and attention beam search grows the hypotheses one token
# per step. Padding is masked inside the model, so results are unchanged.
TOKEN_BUCKET = 8
FRAME_BUCKET = 16
# Two threads of a server (offline requests, finals) may ask for a step program first at once.
_STEP_LOAD_LOCK = threading.Lock()


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
    dec_layers, dec_heads, width = model.decoder_cache_shape()
    fns.append(RuntimeFunction("decoder_step", "forward_decoder_step", (
        InputSpec([None, 1], "int64", "tokens"),
        InputSpec([dec_layers, None, dec_heads, None, width], "float32", "att_cache"),
        InputSpec([None, None, d], "float32", "encoder_out"), InputSpec([None], "int64", "encoder_lengths"))))
    if enc.supports_streaming:
        fns.append(RuntimeFunction("encoder_chunk", "forward_encoder_chunk", (
            InputSpec([None, None, feat_dim], "float32", "xs"), InputSpec([None], "int64", "offsets"),
            InputSpec([layers, None, heads, None, 2 * (d // heads)], "float32", "att_cache"),
            InputSpec([None], "int64", "cache_lengths"),
            InputSpec([layers, None, d, max(enc.cnn_cache_frames, 1)], "float32", "cnn_cache"))))
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
    layers, heads, width = model.decoder_cache_shape()
    att_cache = rng.standard_normal((layers, len(hyps), heads, 5, width)).astype(np.float32)
    att_cache[:, :, :, 0] = 0.0  # the padding entry
    return {
        "encoder": {"feats": feats, "feats_lengths": lengths},
        "ctc_activation": {"encoder_out": enc_out},
        "decoder": {"hyps": hyps, "hyps_lengths": hyps_lengths, "encoder_out": enc_out, "encoder_lengths": enc_len},
        "decoder_step": {"tokens": hyps[:, 4:5], "att_cache": att_cache, "encoder_out": enc_out,
                         "encoder_lengths": enc_len},
    }


class U2ChunkProgram:
    """The exported `encoder_chunk` behind `encode_chunks`: B streams' states gathered into one call
    and scattered back, trimmed to the required cache size. With a bounded cache, every call's
    caches are left-padded (masked) to that size: oneDNN builds its kernels per input shape, and a
    cache that grows chunk by chunk would make every (batch, cache length) pair a shape of its own
    (each build costs several chunks' compute); transcribe's streaming runs this same program, so
    its results stay the server's. One caller at a time, as its predictor: the caches' feed is one
    array reused call after call (`FeedBuffer`)."""

    def __init__(self, predictor: Predictor, subsampling_rate: int, right_context: int, max_positions: int) -> None:
        self.predictor = predictor
        self.subsampling_rate, self.right_context = subsampling_rate, right_context
        self.max_positions = max_positions
        self._att_cache = FeedBuffer()

    def encode_chunks(self, xs: np.ndarray, states: list[U2StreamState], required_cache_size: int
                      ) -> tuple[np.ndarray, list[U2StreamState]]:
        frames = chunk_output_frames(xs.shape[1], self.subsampling_rate, self.right_context)
        feeds = gather_stream_states(states, frames, self.max_positions, max(required_cache_size, 0),
                                     self._att_cache)
        y, att, cnn = self.predictor.run({"xs": np.asarray(xs, np.float32), **feeds})
        return y, scatter_stream_states(states, y.shape[1], att, cnn, required_cache_size)


def check_streaming_parity(model, program_dir: Path, feat_dim: int) -> float:
    """The exported `encoder_chunk` against the dygraph `forward_encoder_chunk`, one stream over
    four chunks, and a batch of three streams at different points against each stream alone."""
    enc = model.encoder
    sub, right_context, chunk = enc.embed.subsampling_rate, enc.embed.right_context, 4
    rng = np.random.default_rng(1)
    num_frames = 4 * chunk * sub + right_context + 1  # four whole chunks
    feats = (rng.standard_normal((3, num_frames, feat_dim)) * 3 + 10).astype(np.float32)
    program = U2ChunkProgram(Predictor(program_dir, streaming=True), sub, right_context, enc.max_output_frames)
    dygraph = DygraphBackend(model)
    windows = chunk_windows(num_frames, sub, right_context, chunk)
    state, state_d, worst = dygraph.new_stream_state(), dygraph.new_stream_state(), 0.0
    for start, end in windows:
        y, (state,) = program.encode_chunks(feats[:1, start:end], [state], 2 * chunk)
        y_d, (state_d,) = dygraph.encode_chunks(feats[:1, start:end], [state_d], 2 * chunk)
        worst = max(worst, float(np.abs(y - y_d).max()), stream_state_diff(state, state_d))
    worst = max(worst, batched_chunk_diff(program, dygraph.new_stream_state, feats, windows, 2 * chunk))
    if not np.isfinite(worst) or worst >= PARITY_ATOL:
        raise ExportError(f"{program_dir} disagrees with the dynamic graph chunk by chunk, or a stream's chunk in "
                          f"a batch with its own: max |diff| = {worst:.3g}")
    return worst


def bundle_meta(config: AsrConfig, model: U2Model) -> dict:
    """The meta.json entries a U2 runtime needs (see U2ExportedBackend)."""
    enc = model.encoder
    att_cache, cnn_cache = enc.cache_shapes()
    return {
        "encoder_type": config.model.encoder_type,
        "sos": model.sos,
        "eos": model.eos,
        # U2++: the decoder program returns the right-to-left log-probs too (decoder_directions).
        "bidirectional_decoder": model.decoder.bidirectional,
        "reverse_weight": model.reverse_weight,
        "subsampling_rate": enc.embed.subsampling_rate,
        "right_context": enc.embed.right_context,
        "min_input_frames": enc.embed.right_context + 1,
        "supports_streaming": enc.supports_streaming,
        "encoder_chunk_version": ENCODER_CHUNK_VERSION,
        "max_encoder_frames": enc.max_output_frames,
        # decoder_step's cache per row and position: [L, H, 2*d_k].
        "decoder_cache_shape": list(model.decoder_cache_shape()),
        # One stream's caches: attention [L, H, 0, 2*d_k] (empty at the start), conv [L, d, k-1].
        "att_cache_shape": att_cache,
        "cnn_cache_shape": cnn_cache,
    }


def decoder_step_cache(model_dir: Path, meta: dict, quantized: set[str], suffix: str = ""
                       ) -> tuple[int, int, int] | None:
    """The cache shape (layers, heads, 2*d_k) of the bundle's step program `decoder_step<suffix>`
    where attention search should use it: None for a bundle exported without it, or one whose
    decoder and step program differ in precision (`quantized`: the INT8 program names; Paddle's
    post-training quantization calibrates the decoder alone), since attention decoding would then
    not run the decoder the bundle's precision says."""
    if not (model_dir / f"decoder_step{suffix}").exists() or "decoder_cache_shape" not in meta:
        return None
    if (f"decoder{suffix}" in quantized) != (f"decoder_step{suffix}" in quantized):
        return None
    layers, heads, width = meta["decoder_cache_shape"]
    return int(layers), int(heads), int(width)


def decoder_directions(meta: dict) -> tuple[bool, float]:
    """(whether the bundle's decoder program also returns right-to-left log-probs, the model's
    reverse_weight) from meta.json; bundles exported before U2++ have a left-to-right decoder."""
    return bool(meta.get("bidirectional_decoder", False)), float(meta.get("reverse_weight", 0.0))


class U2DecoderProgram:
    """`decode`, `decode_bidirectional` and `decode_step` of a backend (Paddle Inference or ONNX
    Runtime) whose `_run_decoder` runs the exported decoder (its outputs are the left-to-right
    log-probs and, in a U2++ bundle (`bidirectional`), the right-to-left ones) and whose
    `_load_decoder_step` loads the step program when `decoder_step_cache` says to use one."""

    model_dir: Path
    bidirectional: bool
    decoder_step_cache: tuple[int, int, int] | None
    step_frame_bucket = 1  # encoder frames padded to a multiple of this for the step program
    _step_program = None

    def _run_decoder(self, hyps, hyps_lengths, encoder_out, encoder_lengths) -> list[np.ndarray]:
        raise NotImplementedError

    def _load_decoder_step(self):
        raise NotImplementedError

    def decode_step(self, tokens, att_cache, encoder_out, encoder_lengths):
        # Loaded at first use: a server that only rescores, or CTC decoding, never pays its memory.
        if self._step_program is None:
            with _STEP_LOAD_LOCK:
                if self._step_program is None:
                    self._step_program = self._load_decoder_step()
        logp, kv = self._step_program.run({
            "tokens": np.asarray(tokens, np.int64), "att_cache": np.asarray(att_cache, np.float32),
            "encoder_out": pad_axis(np.asarray(encoder_out, np.float32), 1, self.step_frame_bucket),
            "encoder_lengths": np.asarray(encoder_lengths, np.int64)})
        return logp, kv

    def decode(self, hyps, hyps_lengths, encoder_out, encoder_lengths):
        return self._run_decoder(hyps, hyps_lengths, encoder_out, encoder_lengths)[0]

    def decode_bidirectional(self, hyps, hyps_lengths, encoder_out, encoder_lengths):
        if not self.bidirectional:
            raise AsrError(f"{self.model_dir}: its decoder has no right-to-left half (not a U2++ model)")
        left, right = self._run_decoder(hyps, hyps_lengths, encoder_out, encoder_lengths)
        return left, right


class U2Streams(Streams):
    """A U2 backend's streams: caches of `_cache_shapes`; shared by the Paddle Inference and ONNX
    Runtime backends."""

    _chunk: U2ChunkProgram | None
    _cache_shapes: tuple
    cannot_stream = ("its model was not trained with chunk masks and causal convolutions (e.g. "
                     "chunk_conformer.yaml); use decoding_chunk_size: -1")

    def _fresh_stream_state(self) -> U2StreamState:
        return U2StreamState.new(*self._cache_shapes)

    def _set_up_streams(self, meta: dict, chunk_program) -> None:
        """The chunk program (a runtime's `encoder_chunk`) and the cache shapes of a streaming bundle."""
        require_meta(self.model_dir, meta, ("max_encoder_frames",))
        self._cache_shapes = (meta["att_cache_shape"], meta["cnn_cache_shape"])
        self._chunk = U2ChunkProgram(chunk_program, self.subsampling_rate, self.right_context,
                                     int(meta["max_encoder_frames"]))


class U2ExportedBackend(U2DecoderProgram, U2Streams, ExportedBackend):
    """A U2 bundle: CTC and attention decoder, and for a streaming model many streams' chunks at a
    time through `encoder_chunk` with per-stream attention and convolution caches."""

    has_decoder = True
    step_frame_bucket = FRAME_BUCKET

    def __init__(self, model_dir: Path, meta: dict, *, num_threads: int = 2,
                 gpu: GpuInference | None = None) -> None:
        require_meta(model_dir, meta, ("functions", "sos", "eos", "subsampling_rate", "right_context",
                                       "att_cache_shape", "cnn_cache_shape"))
        super().__init__(model_dir, meta, num_threads=num_threads, gpu=gpu)
        self.sos, self.eos = int(meta["sos"]), int(meta["eos"])
        self.bidirectional, self.reverse_weight = decoder_directions(meta)
        self.subsampling_rate = int(meta["subsampling_rate"])
        self.right_context = int(meta["right_context"])
        self.supports_streaming = bool(meta.get("supports_streaming")) and (self.model_dir / "encoder_chunk").is_dir()
        # The decoder meets a new input shape at almost every call (hypothesis count and length,
        # encoder length), and oneDNN builds its kernels per shape, which costs far more than
        # running them (bench/RESULTS.md, "Figures formerly in code comments"). So the FP32 decoder
        # runs on Paddle's plain CPU kernels, and utterances whose beams all ended leave the batch.
        self.skip_finished = True
        self._decoder = self._load("decoder", use_mkldnn="decoder" in self._int8_functions)
        self.decoder_step_cache = decoder_step_cache(self.model_dir, meta, self._int8_functions)
        self._chunk = None
        if self.supports_streaming:
            require_chunk_version(model_dir, meta)
            self._set_up_streams(meta, self._load("encoder_chunk", streaming=True))

    def encode_chunks(self, xs: np.ndarray, states: list[U2StreamState], required_cache_size: int
                      ) -> tuple[np.ndarray, list[U2StreamState]]:
        return self._chunk.encode_chunks(xs, states, required_cache_size)

    def _run_decoder(self, hyps, hyps_lengths, encoder_out, encoder_lengths) -> list[np.ndarray]:
        """The decoder program's outputs (U2++: both directions), cut back to the hypotheses' width."""
        u = hyps.shape[1]
        feeds = {
            "hyps": pad_axis(np.asarray(hyps, np.int64), 1, TOKEN_BUCKET, value=self.eos),
            "hyps_lengths": np.asarray(hyps_lengths, np.int64),
            "encoder_out": pad_axis(np.asarray(encoder_out, np.float32), 1, FRAME_BUCKET),
            "encoder_lengths": np.asarray(encoder_lengths, np.int64),
        }
        return [out[:, :u] for out in self._decoder.run(feeds)]

    def _load_decoder_step(self) -> Predictor:
        return self._load("decoder_step", use_mkldnn="decoder_step" in self._int8_functions)
