"""An exported model bundle (FP32 or INT8) as a decoding backend: `load_backend(model_dir, meta)`
gives the Paddle Inference runtime of the bundle's family (`meta["model"]`, see
`paddle_asr.families`), behind the interface the recognizer uses
(`paddle_asr.decode.recognizer.Backend`). Callers need not know which kind of model a bundle holds.

What every family's runtime shares is `export.backend.ExportedBackend`; each family's own backend
is in its module (`export.u2.U2ExportedBackend`, `export.deepspeech2.DeepSpeech2ExportedBackend`).
"""

from __future__ import annotations

from pathlib import Path

from paddle_asr.export.backend import ExportedBackend
from paddle_asr.export.inference import GpuInference
from paddle_asr.families import bundle_family


def load_backend(model_dir: Path, meta: dict, *, num_threads: int = 2,
                 gpu: GpuInference | None = None) -> ExportedBackend:
    """The Paddle Inference runtime of the bundle in `model_dir` whose meta.json is `meta`."""
    return bundle_family(model_dir, meta).runtime_backend(model_dir, meta, num_threads=num_threads, gpu=gpu)
