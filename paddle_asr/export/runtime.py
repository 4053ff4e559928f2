"""An exported model bundle (FP32 or INT8) as a decoding backend: the four runtime programs behind
the same interface as the dynamic graph (`paddle_asr.decode.recognizer.Backend`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paddle_asr.errors import AsrError
from paddle_asr.export.inference import LENGTH_BUCKET, Predictor

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


class ExportedBackend:
    def __init__(self, model_dir: Path, meta: dict, *, num_threads: int = 2) -> None:
        model_dir = Path(model_dir)
        needed = ("functions", "sos", "eos", "subsampling_rate", "right_context", "att_cache_shape", "cnn_cache_shape")
        missing = [k for k in needed if k not in meta]
        if missing:
            raise AsrError(f"{model_dir}/meta.json lacks {missing}: it was exported by an older version of this "
                           "project (a CTC-only model); export it again with stage 4")
        int8_functions = set(meta.get("int8_functions", []))

        def load(name: str, streaming: bool = False, use_mkldnn: bool = True) -> Predictor:
            if not (model_dir / name).is_dir():
                raise AsrError(f"{model_dir} has no {name}/ program; export it again with stage 4")
            return Predictor(model_dir / name, num_threads=num_threads, int8=name in int8_functions,
                             streaming=streaming, use_mkldnn=use_mkldnn)

        self.sos, self.eos = int(meta["sos"]), int(meta["eos"])
        self.subsampling_rate = int(meta["subsampling_rate"])
        self.right_context = int(meta["right_context"])
        self.supports_streaming = bool(meta.get("supports_streaming")) and (model_dir / "encoder_chunk").is_dir()
        # The decoder meets a new input shape at almost every call (hypothesis count and length,
        # encoder length), and oneDNN builds its kernels per shape: measured on the demo test set
        # (96 utterances, beam 5), attention search took 38.5 s with oneDNN and 2.9 s on Paddle's
        # plain CPU kernels, rescoring 3.5 s and 0.5 s. So the FP32 decoder runs without oneDNN, and
        # utterances whose beams all ended leave the decoder batch.
        self.skip_finished = True
        self._att_cache_shape = tuple(meta["att_cache_shape"])
        self._cnn_cache_shape = tuple(meta["cnn_cache_shape"])
        self._encoder = load("encoder")
        self._ctc = load("ctc_activation")
        self._decoder = load("decoder", use_mkldnn="decoder" in int8_functions)
        self._chunk = load("encoder_chunk", streaming=True) if self.supports_streaming else None

    def encode(self, feats, lengths):
        # Time padded to LENGTH_BUCKET frames: see inference.LENGTH_BUCKET.
        feats = _pad_axis(np.asarray(feats, np.float32), 1, LENGTH_BUCKET)
        enc, enc_lengths, ctc_lp = self._encoder.run({"feats": feats, "feats_lengths": np.asarray(lengths, np.int64)})
        keep = int(enc_lengths.max()) if len(enc_lengths) else 0
        return enc[:, :keep], enc_lengths.astype(np.int64), ctc_lp[:, :keep]

    def encode_chunk(self, xs, offset, required_cache_size, att_cache, cnn_cache):
        return tuple(self._chunk.run({
            "xs": np.asarray(xs, np.float32), "offset": np.array([offset], np.int64),
            "required_cache_size": np.array([required_cache_size], np.int64),
            "att_cache": att_cache, "cnn_cache": cnn_cache}))

    def initial_caches(self) -> tuple[np.ndarray, np.ndarray]:
        layers, heads, _, width = self._att_cache_shape
        return np.zeros((layers, heads, 0, width), np.float32), np.zeros(self._cnn_cache_shape, np.float32)

    def ctc_activation(self, encoder_out):
        return self._ctc.run({"encoder_out": np.asarray(encoder_out, np.float32)})[0]

    def decode(self, hyps, hyps_lengths, encoder_out, encoder_lengths):
        u = hyps.shape[1]
        feeds = {
            "hyps": _pad_axis(np.asarray(hyps, np.int64), 1, TOKEN_BUCKET, value=self.eos),
            "hyps_lengths": np.asarray(hyps_lengths, np.int64),
            "encoder_out": _pad_axis(np.asarray(encoder_out, np.float32), 1, FRAME_BUCKET),
            "encoder_lengths": np.asarray(encoder_lengths, np.int64),
        }
        return self._decoder.run(feeds)[0][:, :u]
