"""What this Paddle build can do on GPUs: CUDA devices, cuDNN, NCCL (multi-GPU training), mixed
precision (AMP) and Paddle Inference with TensorRT; and the CPU that timings are quoted with
(`cpu_description`: result.json, RESULTS.md and the benchmarks name it).

The GPU paths (``training.amp``, ``--gpus``, ``--trt``) ask here first, so on a CPU-only build
they stop with one sentence that says what is missing and where to get it, instead of failing
deep inside Paddle. ``paddle-asr devices`` prints the same report; the Docker entry point runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from paddle_asr.cpu_settings import usable_cores
from paddle_asr.errors import AsrError

GPU_IMAGE_HINT = ("GPU features come with the Paddle 3.0 CUDA image: build this project's Dockerfile and run it "
                  "with `docker run --gpus all` (docs/gpu_docker.md)")


@dataclass(frozen=True)
class Feature:
    name: str
    available: bool
    detail: str  # the version found, or why it is unavailable


def _versions() -> tuple[bool, int, str, str, str, tuple[int, ...]]:
    import paddle
    import paddle.inference as paddle_infer

    cuda_build = bool(paddle.is_compiled_with_cuda())
    devices = int(paddle.device.cuda.device_count()) if cuda_build else 0
    trt_runtime = tuple(paddle_infer.get_trt_runtime_version()) if cuda_build else (0, 0, 0)
    return (cuda_build, devices, str(paddle.version.cuda()), str(paddle.version.cudnn()),
            str(paddle.version.nccl()), trt_runtime)


def accelerator_features() -> list[Feature]:
    """One entry per GPU feature, available or not, with the reason."""
    import paddle
    from paddle.base import core

    cuda_build, devices, cuda, cudnn, nccl, trt_runtime = _versions()
    no_cuda = f"this Paddle {paddle.__version__} is a CPU build (no CUDA)"
    if not cuda_build:
        return [Feature(name, False, no_cuda) for name in ("cuda", "cudnn", "nccl", "amp", "tensorrt")]
    no_device = "no CUDA device visible (docker run --gpus all? CUDA_VISIBLE_DEVICES?)"
    gpu = Feature("cuda", devices > 0, f"CUDA {cuda}, {devices} device(s)" if devices else no_device)
    features = [gpu, Feature("cudnn", cudnn not in ("False", "0", ""), f"cuDNN {cudnn}")]
    has_nccl = bool(core.is_compiled_with_nccl())
    features.append(Feature("nccl", has_nccl and devices > 0,
                            (f"NCCL {nccl}" if has_nccl else "this Paddle was built without NCCL")
                            + ("" if devices else f"; {no_device}")))
    features.append(Feature("amp", devices > 0, "float16 and bfloat16 autocast" if devices else no_device))
    trt_ok = any(trt_runtime)
    trt_detail = (f"TensorRT {'.'.join(map(str, trt_runtime))}" if trt_ok
                  else "TensorRT libraries not found (the Paddle CUDA image with 'trt' in its tag has them)")
    features.append(Feature("tensorrt", trt_ok and devices > 0, trt_detail + ("" if devices else f"; {no_device}")))
    return features


def require(feature: str, purpose: str) -> None:
    """Raise a clear AsrError when `feature` (cuda, nccl, amp, tensorrt) is unavailable."""
    found = {f.name: f for f in accelerator_features()}
    if feature not in found:
        raise ValueError(f"unknown feature {feature}")
    if not found[feature].available:
        raise AsrError(f"{purpose} needs {feature}, which is unavailable here: {found[feature].detail}. "
                       f"{GPU_IMAGE_HINT}")


def format_report(features: list[Feature]) -> str:
    return "\n".join(f"{f.name:9s} {'available  ' if f.available else 'unavailable'}  {f.detail}" for f in features)


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> set[str]:
    return set(_cpuinfo_fields().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers: one name ("Intel(R) Xeon(R)
    Processor") covers generations whose speeds differ by half."""
    fields = _cpuinfo_fields()
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def cpu_description() -> str:
    """`cpu_model`, the cores this process may use and the vector instruction sets that decide
    INT8 and FP32 speed: what a real-time factor is quoted with."""
    flags = cpu_flags()
    isa = [name for name in ("avx512_vnni", "avx_vnni", "avx2") if name in flags] or ["no AVX2"]
    cores = usable_cores()
    return f"{cpu_model()}, {cores} core{'' if cores == 1 else 's'} ({', '.join(isa)})"
