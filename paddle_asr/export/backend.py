"""What every exported bundle (FP32 or INT8) offers as a decoding backend: the full-utterance
encoder and the CTC activation, two programs with the same inputs and outputs for every model
family, behind the interface the recognizer uses (`paddle_asr.decode.recognizer.Backend`).

Each family's own backend (`export.u2.U2ExportedBackend`, `export.deepspeech2.DeepSpeech2ExportedBackend`)
adds its streaming program (`new_stream_state`, `encode_chunks`) and decoder; `export.runtime.load_backend`
picks it from the bundle's meta.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from paddle_asr.decode.recognizer import encode_streaming
from paddle_asr.errors import AsrError
from paddle_asr.export.inference import LENGTH_BUCKET, GpuInference, Predictor


def pad_axis(x: np.ndarray, axis: int, multiple: int, value=0) -> np.ndarray:
    """`x` padded with `value` along `axis` to a multiple of `multiple`."""
    pad = -x.shape[axis] % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths, constant_values=value)


def require_meta(model_dir: Path, meta: dict, keys: tuple[str, ...]) -> None:
    """An AsrError naming the missing `meta.json` keys of an outdated bundle."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise AsrError(f"{model_dir}/meta.json lacks {missing}: it was exported by an older version of this "
                       "project; export it again with stage 4")


# The format of every family's `encoder_chunk` program, in meta.json: 2 takes a batch of streams
# (U2: offsets and left-padded caches with their lengths; DeepSpeech2: states [L, B, H]); 3: U2's
# returns the chunk's own keys/values, not the whole next cache. A streaming bundle without it has
# the batch-1 program of earlier versions.
ENCODER_CHUNK_VERSION = 3


def require_chunk_version(model_dir: Path, meta: dict) -> None:
    """An AsrError for a streaming bundle whose `encoder_chunk` is not this version's format."""
    require_meta(model_dir, meta, ("encoder_chunk_version",))
    if meta["encoder_chunk_version"] != ENCODER_CHUNK_VERSION:
        raise AsrError(f"{model_dir}/meta.json: encoder_chunk_version {meta['encoder_chunk_version']}, this version "
                       f"of the project runs {ENCODER_CHUNK_VERSION}; export it again with stage 4")


class _RecordingPredictor:
    """A predictor that keeps a copy of every feed it runs."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.feeds = predictor, []

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.predictor.run(feeds)


class Streams:
    """`new_stream_state` of a backend (Paddle Inference or ONNX Runtime) whose chunk program is
    `_chunk` (None: the model cannot stream, for the reason `cannot_stream` gives); a family's mixin
    sets `cannot_stream` and makes its fresh state in `_fresh_stream_state`."""

    model_dir: Path
    _chunk: object | None
    cannot_stream: str

    def new_stream_state(self):
        if self._chunk is None:
            raise AsrError(f"{self.model_dir} cannot stream: {self.cannot_stream}")
        return self._fresh_stream_state()

    def _fresh_stream_state(self):
        raise NotImplementedError

    def chunk_program_feeds(self, utterances: Iterable[np.ndarray], chunk_size: int) -> list[dict[str, np.ndarray]]:
        """The inputs `encoder_chunk` meets when each utterance [T, D] streams alone, `chunk_size`
        encoder frames at a time (stage 6 calibrates the INT8 chunk program on them)."""
        if self._chunk is None:
            raise AsrError(f"{self.model_dir} has no streaming encoder_chunk program")
        recorder = _RecordingPredictor(self._chunk.predictor)
        self._chunk.predictor = recorder
        try:
            for feats in utterances:
                encode_streaming(self, feats, chunk_size, -1)
        finally:
            self._chunk.predictor = recorder.predictor
        return recorder.feeds


class ExportedBackend:
    """The programs every family exports: `encoder` and `ctc_activation`. A family's backend
    subclasses this and sets the attributes below."""

    has_decoder: bool
    bidirectional = False  # a U2++ bundle's decoder program gives both directions (export.u2)
    reverse_weight = 0.0
    sos: int | None
    eos: int | None
    subsampling_rate: int
    right_context: int
    supports_streaming: bool
    skip_finished: bool
    # The family's streaming program (`.predictor` runs `encoder_chunk`), None when it cannot stream.
    _chunk = None

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
        feats = pad_axis(np.asarray(feats, np.float32), 1, LENGTH_BUCKET)
        enc, enc_lengths, ctc_lp = self._encoder.run({"feats": feats, "feats_lengths": np.asarray(lengths, np.int64)})
        keep = int(enc_lengths.max()) if len(enc_lengths) else 0
        return enc[:, :keep], enc_lengths.astype(np.int64), ctc_lp[:, :keep]

    def ctc_activation(self, encoder_out):
        return self._ctc.run({"encoder_out": np.asarray(encoder_out, np.float32)})[0]

    def new_stream_state(self) -> object:
        """A fresh per-stream state for `encode_chunks` (see decode.recognizer.Backend)."""
        raise NotImplementedError

    def encode_chunks(self, xs: np.ndarray, states: list, required_cache_size: int) -> tuple[np.ndarray, list]:
        """B streams' next chunk windows through the streaming encoder at once (see decode.recognizer.Backend)."""
        raise NotImplementedError
