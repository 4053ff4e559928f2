"""What export writes for a DeepSpeech2 model (conv + RNN + CTC, no decoder), and its runtime:

    <out>/encoder/         forward_encoder: feats [B, T, D], feats_lengths [B]
                           -> encoder_out [B, T', d], encoder_lengths [B], ctc_log_probs [B, T', V]
    <out>/encoder_chunk/   (online model only) the encoder on one chunk window with its recurrent
                           states: feats [1, t, D], feats_lengths [1], h [L, 1, H], c [L, 1, H]
                           -> encoder_out [1, t', d], encoder_lengths [1], h, c
    <out>/ctc_activation/  encoder_out [B, T', d] -> ctc_log_probs [B, T', V]

CMVN is inside both encoders (raw fbank in). A GRU has no cell state, so its `encoder_chunk` has
no `c` input or output at all rather than a dummy one: the bundle's meta lists the state names
(`state_names`), and the runtime carries exactly those. `encoder_chunk` is batch 1 with a dynamic
window length, like the U2 chunk program; the runtime pads the last window to full size so that
every chunk of a given size has one shape (oneDNN builds kernels per shape).

`DeepSpeech2ExportedBackend` runs such a bundle: CTC only (the recognizer offers the CTC searches),
and for the online model chunk-by-chunk streaming with the recurrent states carried over.

Chunk windows are the project's one rule (`decode.recognizer.chunk_windows`), which for this
model's convolutions (7 input frames per output frame, stride 4) are PaddleSpeech's
`forward_chunk_by_chunk` windows: (n - 1) * 4 + 7 input frames every 4 * n frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from paddle import nn
from paddle.static import InputSpec

from paddle_asr.config import AsrConfig
from paddle_asr.decode.recognizer import chunk_windows
from paddle_asr.errors import AsrError
from paddle_asr.export.backend import ExportedBackend, require_meta
from paddle_asr.export.common import PARITY_ATOL, PARITY_LENGTHS, ExportError, RuntimeFunction
from paddle_asr.export.inference import GpuInference, Predictor
from paddle_asr.models.deepspeech2 import DeepSpeech2Model

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
        states = tuple(InputSpec(enc.state_shape(1), "float32", name) for name in state_names(model))
        chunk = _GruChunk(model) if enc.use_gru else _LstmChunk(model)
        fns.append(RuntimeFunction("encoder_chunk", "forward", (
            InputSpec([1, None, feat_dim], "float32", "feats"), InputSpec([1], "int64", "feats_lengths"), *states),
            layer=chunk))
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


def check_streaming_parity(model: DeepSpeech2Model, program_dir, feat_dim: int) -> float:
    """The exported `encoder_chunk` against the dygraph encoder, chunk by chunk with carried states,
    over one utterance whose last window is partial (zero-padded, as the runtime feeds it)."""
    enc = model.encoder
    feats = parity_inputs(model, feat_dim, seed=1)["encoder"]["feats"][0]  # PARITY_LENGTHS[0] frames
    windows = chunk_windows(len(feats), enc.subsampling_rate, enc.right_context, PARITY_CHUNK)
    size = windows[0][1] - windows[0][0]
    names = state_names(model)
    states = dict(zip(names, model.initial_states(1)))
    predictor = Predictor(program_dir)
    worst = 0.0
    for start, end in windows:
        xs = np.zeros((1, size, feat_dim), np.float32)
        xs[0, : end - start] = feats[start:end]
        n = np.array([end - start], np.int64)
        got = predictor.run({"feats": xs, "feats_lengths": n, **states})
        with paddle.no_grad():
            ref = enc(paddle.to_tensor(xs), paddle.to_tensor(n), *(paddle.to_tensor(states[s]) for s in names))
        ref = [t.numpy() for t in ref[: 2 + len(names)]]
        if not np.array_equal(got[1], ref[1]):
            raise ExportError(f"{program_dir}: chunk lengths {got[1]} vs {ref[1]} at frame {start}")
        valid = int(ref[1][0])
        worst = max(worst, float(np.abs(got[0][:, :valid] - ref[0][:, :valid]).max(initial=0.0)),
                    *(float(np.abs(g - r).max()) for g, r in zip(got[2:], ref[2:])))
        states = dict(zip(names, got[2:]))  # carry the exported states, as a server would
    if not np.isfinite(worst) or worst >= PARITY_ATOL:
        raise ExportError(f"{program_dir} disagrees with the dynamic graph chunk by chunk: max |diff| = {worst:.3g}")
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
        # encoder_chunk's recurrent state inputs and outputs, in program order, each [L, 1, H].
        meta.update(state_names=state_names(model), state_shape=enc.state_shape(1))
    return meta


class DeepSpeech2ExportedBackend(ExportedBackend):
    """A DeepSpeech2 bundle: CTC only (the recognizer offers the CTC searches), and for the online
    model chunk-by-chunk streaming through `encoder_chunk` with the RNN states carried over."""

    has_decoder = False
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
            require_meta(model_dir, meta, ("state_names", "state_shape"))
            self._state_names = list(meta["state_names"])
            self._state_shape = tuple(meta["state_shape"])
            # Not `streaming=True`: that keeps zero-size attention caches away from oneDNN, and
            # the recurrent states are never empty.
            self._chunk = self._load("encoder_chunk")

    def initial_states(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(self._state_shape, np.float32) for name in self._state_names}

    def stream_step(self, feats: np.ndarray, length: int, states: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One chunk window [1, t, D] of which `length` frames are real -> (its valid encoder
        frames [1, t', d], the next states)."""
        out, out_lengths, *next_states = self._chunk.run(
            {"feats": np.asarray(feats, np.float32), "feats_lengths": np.array([length], np.int64), **states})
        return out[:, : int(out_lengths[0])], dict(zip(self._state_names, next_states))

    def encode_stream(self, feats: np.ndarray, chunk_size: int, num_left_chunks: int) -> np.ndarray:
        """Chunks of `chunk_size` encoder frames over the windows of `chunk_windows` (PaddleSpeech's
        forward_chunk_by_chunk), states carried across. `num_left_chunks` does not apply: the RNN
        state summarises all of the past. The last window is zero-padded to full size (its length
        input masks the padding) so that every chunk has the same shape."""
        if self._chunk is None:
            raise AsrError(f"{self.model_dir} cannot stream: only the online DeepSpeech2 model (rnn_direction: "
                           "forward) has an encoder_chunk program; use decoding_chunk_size: -1")
        if chunk_size < 1:
            raise AsrError(f"chunk_size must be a positive number of encoder frames, got {chunk_size}")
        feats = np.asarray(feats, np.float32)
        windows = chunk_windows(feats.shape[0], self.subsampling_rate, self.right_context, chunk_size)
        if not windows:
            raise AsrError(f"{feats.shape[0]} frames are fewer than the {self.right_context + 1} "
                           "one encoder frame needs")
        size = windows[0][1] - windows[0][0]
        states, outputs = self.initial_states(), []
        for start, end in windows:
            xs = np.zeros((1, size, feats.shape[1]), np.float32)
            xs[0, : end - start] = feats[start:end]
            out, states = self.stream_step(xs, end - start, states)
            outputs.append(out)
        return np.concatenate(outputs, axis=1)
