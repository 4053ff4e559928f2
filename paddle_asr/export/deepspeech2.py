"""What export writes for a DeepSpeech2 model (conv + RNN + CTC, no decoder), and its runtime:

    <out>/encoder/         forward_encoder: feats [B, T, D], feats_lengths [B]
                           -> encoder_out [B, T', d], encoder_lengths [B], ctc_log_probs [B, T', V]
    <out>/encoder_chunk/   (online model only) the encoder on the chunk windows of B streams with
                           their recurrent states: feats [B, t, D], feats_lengths [B], h [L, B, H],
                           c [L, B, H] -> encoder_out [B, t', d], encoder_lengths [B], h, c
    <out>/ctc_activation/  encoder_out [B, T', d] -> ctc_log_probs [B, T', V]

CMVN is inside both encoders (raw fbank in). A GRU has no cell state, so its `encoder_chunk` has
no `c` input or output at all rather than a dummy one: the bundle's meta lists the state names
(`state_names`), and the runtime carries exactly those. `encoder_chunk` has a dynamic batch and
window length, like the U2 chunk program; the runtime pads a stream's last window to full size so
that every chunk of a given size has one shape (oneDNN builds kernels per shape;
`models.deepspeech2.DeepSpeech2StreamState`).

`DeepSpeech2ExportedBackend` runs such a bundle: CTC only (the recognizer offers the CTC searches),
and for the online model chunk-by-chunk streaming with the recurrent states carried over.

Chunk windows are the project's one rule (`decode.recognizer.chunk_windows`), which for this
model's convolutions (7 input frames per output frame, stride 4) are PaddleSpeech's
`forward_chunk_by_chunk` windows: (n - 1) * 4 + 7 input frames every 4 * n frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from paddle import nn
from paddle.static import InputSpec

from paddle_asr.config import AsrConfig
from paddle_asr.decode.dygraph_backend import DeepSpeech2DygraphBackend
from paddle_asr.decode.recognizer import chunk_windows
from paddle_asr.export.backend import (
    ENCODER_CHUNK_VERSION,
    ExportedBackend,
    Streams,
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
from paddle_asr.models.deepspeech2 import (
    DeepSpeech2Model,
    DeepSpeech2StreamState,
    gather_rnn_states,
    scatter_rnn_states,
)

# The chunk size (encoder frames) of the export-time streaming check: small, so that the check
# crosses several chunk boundaries and ends on a partial window.
PARITY_CHUNK = 4


class _LstmChunk(nn.Layer):
    """`encoder_chunk` of an LSTM model: the encoder with h and c in and out."""

    def __init__(self, model: DeepSpeech2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats, feats_lengths, h, c):
        return self.model.encoder(feats, feats_lengths, h, c)


class _GruChunk(nn.Layer):
    """`encoder_chunk` of a GRU model: h only (the encoder would echo a c it never reads)."""

    def __init__(self, model: DeepSpeech2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats, feats_lengths, h):
        out, lengths, h, _ = self.model.encoder(feats, feats_lengths, h)
        return out, lengths, h


def state_names(model: DeepSpeech2Model) -> list[str]:
    return ["h"] if model.encoder.use_gru else ["h", "c"]


def runtime_functions(model: DeepSpeech2Model, feat_dim: int) -> list[RuntimeFunction]:
    """encoder and ctc_activation; encoder_chunk only for the online (forward-only RNN) model."""
    enc = model.encoder
    fns = [
        RuntimeFunction("encoder", "forward_encoder", (
            InputSpec([None, None, feat_dim], "float32", "feats"), InputSpec([None], "int64", "feats_lengths"))),
        RuntimeFunction("ctc_activation", "ctc_activation",
                        (InputSpec([None, None, enc.output_size], "float32", "encoder_out"),)),
    ]
    if enc.supports_streaming:
        states = tuple(InputSpec(enc.state_shape(None), "float32", name) for name in state_names(model))
        chunk = _GruChunk(model) if enc.use_gru else _LstmChunk(model)
        fns.append(RuntimeFunction("encoder_chunk", "forward", (
            InputSpec([None, None, feat_dim], "float32", "feats"), InputSpec([None], "int64", "feats_lengths"),
            *states), layer=chunk))
    return fns


def parity_inputs(model: DeepSpeech2Model, feat_dim: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random inputs that are standard normal *after* the model's CMVN.

    Not the U2 recipe (N(10, 3^2) raw features): at 161 bins three mel bins are constant in real
    data and get istd ~1e10, so arbitrary raw values there would push ~1e11 through the network and
    the check would measure float rounding of absurd activations instead of the export.
    """
    rng = np.random.default_rng(seed)
    cmvn = model.encoder.global_cmvn
    mean = cmvn.mean.numpy() if cmvn is not None else np.zeros(feat_dim, np.float32)
    istd = cmvn.istd.numpy() if cmvn is not None else np.ones(feat_dim, np.float32)
    lengths = np.asarray(PARITY_LENGTHS, dtype=np.int64)
    feats = (mean + rng.standard_normal((len(lengths), int(lengths.max()), feat_dim)) / istd).astype(np.float32)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    frames = int(model.encoder.output_length(int(lengths.max())))
    enc_out = rng.standard_normal((len(lengths), frames, model.encoder.output_size)).astype(np.float32)
    return {"encoder": {"feats": feats, "feats_lengths": lengths}, "ctc_activation": {"encoder_out": enc_out}}


class DeepSpeech2ChunkProgram:
    """The exported `encoder_chunk` behind `encode_chunks`: B streams' windows and states stacked
    on the batch axis, one call, the states split back."""

    def __init__(self, predictor: Predictor, names: list[str]) -> None:
        self.predictor, self.names = predictor, names

    def encode_chunks(self, xs: np.ndarray, states: list[DeepSpeech2StreamState], required_cache_size: int
                      ) -> tuple[np.ndarray, list[DeepSpeech2StreamState]]:
        """required_cache_size does not apply: the RNN state summarises all of the past."""
        feats, lengths, h, c = gather_rnn_states(xs, states)
        out, out_lengths, *next_states = self.predictor.run(
            {"feats": feats, "feats_lengths": lengths, **dict(zip(self.names, (h, c)))})
        next_c = next_states[1] if len(next_states) > 1 else None
        return out[:, : int(out_lengths.max())], scatter_rnn_states(feats, next_states[0], next_c)


def check_streaming_parity(model: DeepSpeech2Model, program_dir, feat_dim: int) -> float:
    """The exported `encoder_chunk` against the dygraph encoder, chunk by chunk with carried states,
    over one utterance whose last window is partial (zero-padded, as the runtime feeds it); and a
    batch of three streams at different points against each stream alone."""
    enc = model.encoder
    feats = parity_inputs(model, feat_dim, seed=1)["encoder"]["feats"]  # PARITY_LENGTHS[0] frames
    windows = chunk_windows(feats.shape[1], enc.subsampling_rate, enc.right_context, PARITY_CHUNK)
    program = DeepSpeech2ChunkProgram(Predictor(program_dir), state_names(model))
    dygraph = DeepSpeech2DygraphBackend(model)
    state, worst = model.new_stream_state(), 0.0
    for start, end in windows:
        got, (next_state,) = program.encode_chunks(feats[:1, start:end], [state], -1)
        # The dygraph encoder from the exported states, as a server carries them.
        ref, (ref_state,) = dygraph.encode_chunks(feats[:1, start:end], [state], -1)
        if got.shape != ref.shape:
            raise ExportError(f"{program_dir}: chunk output {got.shape} vs {ref.shape} at frame {start}")
        worst = max(worst, float(np.abs(got - ref).max(initial=0.0)), stream_state_diff(next_state, ref_state))
        state = next_state
    # Three different utterances (the parity batch's rows are one utterance and its padding).
    rng = np.random.default_rng(2)
    batch = np.stack([feats[0], feats[0, ::-1], feats[0, rng.permutation(feats.shape[1])]])
    worst = max(worst, batched_chunk_diff(program, model.new_stream_state, batch, windows, -1))
    if not np.isfinite(worst) or worst >= PARITY_ATOL:
        raise ExportError(f"{program_dir} disagrees with the dynamic graph chunk by chunk, or a stream's chunk in "
                          f"a batch with its own: max |diff| = {worst:.3g}")
    return worst


def bundle_meta(config: AsrConfig, model: DeepSpeech2Model) -> dict:
    """The meta.json entries a DeepSpeech2 runtime needs (see DeepSpeech2ExportedBackend); all come
    from the model (`config` is part of every family's signature)."""
    enc = model.encoder
    meta = {
        "encoder_type": "gru" if enc.use_gru else "lstm",
        "rnn_direction": enc.rnn_direction,
        "num_rnn_layers": enc.num_rnn_layers,
        "rnn_size": enc.rnn_size,
        "encoder_output_size": enc.output_size,
        "blank_id": model.blank_id,
        # No attention decoder: no <sos>/<eos>; the recognizer offers the CTC searches only.
        "has_decoder": False,
        "sos": None,
        "eos": None,
        "subsampling_rate": enc.subsampling_rate,
        "right_context": enc.right_context,
        "receptive_field": enc.receptive_field,
        "min_input_frames": enc.receptive_field,
        "supports_streaming": enc.supports_streaming,
    }
    if enc.supports_streaming:
        # encoder_chunk's recurrent state inputs and outputs, in program order; one stream's [L, H].
        shape = enc.state_shape(1)
        meta.update(state_names=state_names(model), state_shape=[shape[0], shape[2]],
                    encoder_chunk_version=ENCODER_CHUNK_VERSION)
    return meta


class DeepSpeech2Streams(Streams):
    """A DeepSpeech2 backend's streams: recurrent states of `_state_shape` (no chunk program: the
    offline model); shared by Paddle Inference and ONNX Runtime."""

    _chunk: DeepSpeech2ChunkProgram | None
    _state_shape: tuple
    cannot_stream = ("only the online DeepSpeech2 model (rnn_direction: forward) has an encoder_chunk "
                     "program; use decoding_chunk_size: -1")

    def _fresh_stream_state(self) -> DeepSpeech2StreamState:
        zeros = np.zeros(self._state_shape, np.float32)
        return DeepSpeech2StreamState(zeros, zeros.copy())


class DeepSpeech2ExportedBackend(DeepSpeech2Streams, ExportedBackend):
    """A DeepSpeech2 bundle: CTC only (the recognizer offers the CTC searches), and for the online
    model chunk-by-chunk streaming through `encoder_chunk` with the RNN states carried over."""

    has_decoder = False
    decoder_step_cache = None
    sos = eos = None
    skip_finished = True  # only read by attention search, which needs a decoder

    def __init__(self, model_dir: Path, meta: dict, *, num_threads: int = 2,
                 gpu: GpuInference | None = None) -> None:
        require_meta(model_dir, meta, ("functions", "subsampling_rate", "right_context", "supports_streaming"))
        super().__init__(model_dir, meta, num_threads=num_threads, gpu=gpu)
        self.subsampling_rate = int(meta["subsampling_rate"])
        self.right_context = int(meta["right_context"])
        self.supports_streaming = bool(meta["supports_streaming"]) and (self.model_dir / "encoder_chunk").is_dir()
        self._chunk = None
        if self.supports_streaming:
            require_chunk_version(model_dir, meta)
            require_meta(model_dir, meta, ("state_names", "state_shape"))
            self._state_shape = tuple(meta["state_shape"])
            # Not `streaming=True`: that keeps zero-size attention caches away from oneDNN, and
            # the recurrent states are never empty.
            self._chunk = DeepSpeech2ChunkProgram(self._load("encoder_chunk"), list(meta["state_names"]))

    def encode_chunks(self, xs: np.ndarray, states: list[DeepSpeech2StreamState], required_cache_size: int
                      ) -> tuple[np.ndarray, list[DeepSpeech2StreamState]]:
        """Chunk windows of `chunk_windows` (PaddleSpeech's forward_chunk_by_chunk), states carried
        across; `required_cache_size` does not apply (the RNN state summarises all of the past)."""
        return self._chunk.encode_chunks(xs, states, required_cache_size)
