"""An exported model bundle (FP32 or INT8) as a decoding backend: its runtime programs behind the
interface the recognizer uses (`paddle_asr.decode.recognizer.Backend`).

`ExportedBackend(model_dir, meta)` returns the class for the bundle's `meta["model"]`:
`U2ExportedBackend` (CTC + attention decoder, streaming with attention/convolution caches) or
`DeepSpeech2ExportedBackend` (CTC only, streaming with recurrent states). Callers need not know
which kind of model a bundle holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paddle_asr.decode.recognizer import chunk_windows, encode_streaming
from paddle_asr.errors import AsrError
from paddle_asr.export.inference import LENGTH_BUCKET, GpuInference, Predictor

# Decoder inputs are padded too (hypothesis length to 8 tokens, encoder frames to 16): every new
# shape costs oneDNN a primitive build, and attention beam search grows the hypotheses one token
# per step. Padding is masked inside the model, so results are unchanged.
TOKEN_BUCKET = 8
FRAME_BUCKET = 16


def _pad_axis(x: np.ndarray, axis: int, multiple: int, value=0) -> np.ndarray:
    pad = -x.shape[axis] % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths, constant_values=value)


def _require(model_dir: Path, meta: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise AsrError(f"{model_dir}/meta.json lacks {missing}: it was exported by an older version of this "
                       "project; export it again with stage 4")


class ExportedBackend:
    """What every exported bundle offers: the full-utterance encoder and the CTC activation, both
    programs with the same inputs and outputs for every model. Instantiating this class gives the
    subclass for `meta["model"]`."""

    has_decoder: bool
    sos: int | None
    eos: int | None
    subsampling_rate: int
    right_context: int
    supports_streaming: bool
    skip_finished: bool

    def __new__(cls, model_dir: Path, meta: dict, *, num_threads: int = 2, gpu: GpuInference | None = None):
        if cls is ExportedBackend:
            cls = DeepSpeech2ExportedBackend if meta.get("model") == "deepspeech2" else U2ExportedBackend
        return super().__new__(cls)

    def __init__(self, model_dir: Path, meta: dict, *, num_threads: int = 2,
                 gpu: GpuInference | None = None) -> None:
        self.model_dir = Path(model_dir)
        self._num_threads = num_threads
        self._gpu = gpu
        self._int8_functions = set(meta.get("int8_functions", []))
        self._encoder = self._load("encoder")
        self._ctc = self._load("ctc_activation")

    def _load(self, name: str, *, streaming: bool = False, use_mkldnn: bool = True) -> Predictor:
        if not (self.model_dir / name).is_dir():
            raise AsrError(f"{self.model_dir} has no {name}/ program; export it again with stage 4")
        gpu = self._gpu
        if gpu is not None and name != "encoder":
            # TensorRT takes the encoder, where the time goes; the small CTC, chunk and decoder
            # programs (empty caches, changing hypothesis counts) run on the plain GPU predictor.
            gpu = GpuInference(gpu.device_id)
        return Predictor(self.model_dir / name, num_threads=self._num_threads, int8=name in self._int8_functions,
                         streaming=streaming, use_mkldnn=use_mkldnn, gpu=gpu)

    def encode(self, feats, lengths):
        # Time padded to LENGTH_BUCKET frames: see inference.LENGTH_BUCKET.
        feats = _pad_axis(np.asarray(feats, np.float32), 1, LENGTH_BUCKET)
        enc, enc_lengths, ctc_lp = self._encoder.run({"feats": feats, "feats_lengths": np.asarray(lengths, np.int64)})
        keep = int(enc_lengths.max()) if len(enc_lengths) else 0
        return enc[:, :keep], enc_lengths.astype(np.int64), ctc_lp[:, :keep]

    def ctc_activation(self, encoder_out):
        return self._ctc.run({"encoder_out": np.asarray(encoder_out, np.float32)})[0]

    def encode_stream(self, feats: np.ndarray, chunk_size: int, num_left_chunks: int) -> np.ndarray:
        """One utterance [T, D] through the streaming encoder, `chunk_size` encoder frames at a
        time, as a streaming server would -> encoder_out [1, T', d]."""
        raise NotImplementedError


class U2ExportedBackend(ExportedBackend):
    has_decoder = True

    def __init__(self, model_dir: Path, meta: dict, *, num_threads: int = 2,
                 gpu: GpuInference | None = None) -> None:
        _require(model_dir, meta, ("functions", "sos", "eos", "subsampling_rate", "right_context",
                                   "att_cache_shape", "cnn_cache_shape"))
        super().__init__(model_dir, meta, num_threads=num_threads, gpu=gpu)
        self.sos, self.eos = int(meta["sos"]), int(meta["eos"])
        self.subsampling_rate = int(meta["subsampling_rate"])
        self.right_context = int(meta["right_context"])
        self.supports_streaming = bool(meta.get("supports_streaming")) and (self.model_dir / "encoder_chunk").is_dir()
        # The decoder meets a new input shape at almost every call (hypothesis count and length,
        # encoder length), and oneDNN builds its kernels per shape: measured on the demo test set
        # (96 utterances, beam 5), attention search took 38.5 s with oneDNN and 2.9 s on Paddle's
        # plain CPU kernels, rescoring 3.5 s and 0.5 s. So the FP32 decoder runs without oneDNN, and
        # utterances whose beams all ended leave the decoder batch.
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
            "hyps": _pad_axis(np.asarray(hyps, np.int64), 1, TOKEN_BUCKET, value=self.eos),
            "hyps_lengths": np.asarray(hyps_lengths, np.int64),
            "encoder_out": _pad_axis(np.asarray(encoder_out, np.float32), 1, FRAME_BUCKET),
            "encoder_lengths": np.asarray(encoder_lengths, np.int64),
        }
        return self._decoder.run(feeds)[0][:, :u]


class DeepSpeech2ExportedBackend(ExportedBackend):
    """A DeepSpeech2 bundle: CTC only (the recognizer offers the CTC searches), and for the online
    model chunk-by-chunk streaming through `encoder_chunk` with the RNN states carried over."""

    has_decoder = False
    sos = eos = None
    skip_finished = True  # only read by attention search, which needs a decoder

    def __init__(self, model_dir: Path, meta: dict, *, num_threads: int = 2,
                 gpu: GpuInference | None = None) -> None:
        _require(model_dir, meta, ("functions", "subsampling_rate", "right_context", "supports_streaming"))
        super().__init__(model_dir, meta, num_threads=num_threads, gpu=gpu)
        self.subsampling_rate = int(meta["subsampling_rate"])
        self.right_context = int(meta["right_context"])
        self.supports_streaming = bool(meta["supports_streaming"]) and (self.model_dir / "encoder_chunk").is_dir()
        self._chunk = None
        if self.supports_streaming:
            _require(model_dir, meta, ("state_names", "state_shape"))
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
            raise AsrError(f"{feats.shape[0]} frames are fewer than the {self.right_context + 1} one encoder frame needs")
        size = windows[0][1] - windows[0][0]
        states, outputs = self.initial_states(), []
        for start, end in windows:
            xs = np.zeros((1, size, feats.shape[1]), np.float32)
            xs[0, : end - start] = feats[start:end]
            out, states = self.stream_step(xs, end - start, states)
            outputs.append(out)
        return np.concatenate(outputs, axis=1)
