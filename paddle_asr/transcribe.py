"""Transcribe audio files with an exported model bundle (FP32 or INT8).

Any readable WAV/FLAC is accepted: it is downmixed to mono and resampled to the model's rate.
A file that cannot be read is reported by name with the reason, the others are still transcribed,
and the caller gets the failures back to set a non-zero exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from paddle_asr.config import DecodeConfig
from paddle_asr.data.audio import read_audio_resampled
from paddle_asr.decode.recognizer import Recognizer
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import read_bundle
from paddle_asr.features import compute_fbank

DEFAULT_METHOD = "attention_rescoring"


def transcribe_files(model_dir: Path, paths: Iterable[Path], *, method: str = DEFAULT_METHOD, chunk_size: int = -1,
                     beam_size: int = 10, num_threads: int = 2, out=sys.stdout, err=sys.stderr) -> list[tuple[Path, str]]:
    """Print `<file stem> <text>` per file; return [(path, reason)] for files that failed.

    chunk_size > 0 decodes as a streaming server would: the encoder runs chunk by chunk.
    """
    from paddle_asr.export.runtime import ExportedBackend

    meta, feat_conf, tokenizer = read_bundle(Path(model_dir))
    backend = ExportedBackend(Path(model_dir), meta, num_threads=num_threads)
    recognizer = Recognizer(backend, DecodeConfig(methods=[method], beam_size=beam_size, decoding_chunk_size=chunk_size))
    failures: list[tuple[Path, str]] = []
    min_frames = int(meta.get("min_input_frames", 1))
    for path in map(Path, paths):
        try:
            waveform = read_audio_resampled(path, feat_conf.sample_rate)
            feats = compute_fbank(waveform, feat_conf)
            if feats.shape[0] < min_frames:
                raise AsrError(f"{path} is too short to transcribe ({feats.shape[0]} frames, need {min_frames})")
            ids = recognizer.recognize(feats[None], np.array([feats.shape[0]], dtype=np.int64))[method][0]
            text = tokenizer.decode(ids)
        except AsrError as e:
            print(f"error: {e}", file=err)
            failures.append((path, str(e)))
            continue
        print(f"{path.stem} {text}".rstrip(), file=out, flush=True)
    return failures
