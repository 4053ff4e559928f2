"""An exported model bundle (FP32 or INT8) as a decoding backend: `load_backend(model_dir, meta)`
gives the Paddle Inference runtime of the bundle's family (`meta["model"]`, see
`paddle_asr.families`), or with `runtime="onnx"` the ONNX Runtime one of its ONNX export
(`export.onnx_backend`), behind the interface the recognizer uses
(`paddle_asr.decode.recognizer.Backend`). Callers need not know which kind of model a bundle holds.

What every family's runtime shares is `export.backend.ExportedBackend`; each family's own backend
is in its module (`export.u2.U2ExportedBackend`, `export.deepspeech2.DeepSpeech2ExportedBackend`).
"""

from __future__ import annotations

from pathlib import Path

from paddle_asr.errors import AsrError
from paddle_asr.export.backend import ExportedBackend
from paddle_asr.export.bundle import read_bundle
from paddle_asr.export.inference import GpuInference
from paddle_asr.export.onnx_backend import OnnxBackend, is_onnx_export, load_onnx_backend, onnx_export_of
from paddle_asr.families import bundle_family

RUNTIMES = ("paddle", "onnx")


def onnx_is_preferred(model_dir: Path, meta: dict, gpu: GpuInference | None = None) -> bool:
    """`runtime="auto"` (transcribe and serve): ONNX Runtime where it gives Paddle Inference's
    hypotheses faster, i.e. an FP32 Paddle bundle run on the CPU with its ONNX export beside it
    (bench/RESULTS.md: 1.14 / 1.40 times at 1 / 2 threads, same hypotheses in stage 5). An INT8
    bundle stays on Paddle Inference: ONNX Runtime's INT8 export gives hypotheses of its own."""
    return (gpu is None and not is_onnx_export(model_dir) and meta.get("precision", "fp32") == "fp32"
            and is_onnx_export(Path(model_dir).parent / "onnx"))


def load_backend(model_dir: Path, meta: dict, *, num_threads: int = 2, gpu: GpuInference | None = None,
                 runtime: str = "") -> ExportedBackend | OnnxBackend:
    """The runtime of the exported model in `model_dir` whose meta.json is `meta`: Paddle Inference,
    or ONNX Runtime (`runtime="onnx"`: the ONNX export beside a Paddle bundle, or an ONNX export
    directory itself). No `runtime`: the one the directory holds; "auto": that, or ONNX Runtime where
    `onnx_is_preferred`."""
    if runtime not in ("", "auto", *RUNTIMES):
        raise AsrError(f"--runtime {runtime}: use one of {', '.join(RUNTIMES)} or auto")
    if runtime == "auto":
        runtime = "onnx" if onnx_is_preferred(model_dir, meta, gpu) else ""
    onnx_dir = is_onnx_export(model_dir)
    if runtime == "onnx" or (onnx_dir and not runtime):
        if gpu is not None:
            raise AsrError("--runtime onnx runs on the CPU here; drop --device/--trt, or use --runtime paddle")
        target = onnx_export_of(model_dir, meta)
        return load_onnx_backend(target, read_bundle(target)[0], num_threads=num_threads)
    if onnx_dir:
        raise AsrError(f"{model_dir} holds an ONNX export: run it with --runtime onnx, or pass the Paddle bundle "
                       "beside it (export/fp32 or export/int8) with --runtime paddle")
    return bundle_family(model_dir, meta).runtime_backend(model_dir, meta, num_threads=num_threads, gpu=gpu)
