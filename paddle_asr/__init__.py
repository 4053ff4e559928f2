"""paddle_asr: Mandarin and English speech recognition recipes on PaddlePaddle 3.

The engine: data, features, models, decoding, training, export, quantization and scoring.
Shell stages under `local/` and `recipes/` only call the `paddle-asr` command in order.
"""

import os
import warnings

# Paddle's C++ core logs through glog ("New Executor is Running", pass statistics); only errors
# matter to a user. Must be set before paddle is imported.
os.environ.setdefault("GLOG_minloglevel", "2")

# Paddle warns at import time that the C++-extension cache tool is missing; this project builds no
# extensions, so the message is noise for every user. Installed before any module imports paddle.
warnings.filterwarnings("ignore", message="No ccache found")
warnings.filterwarnings("ignore", message="Setuptools is replacing distutils")
# BatchNorm's notice that training always tracks running statistics, and a static-graph notice about
# an op attribute, describe Paddle internals the user cannot act on.
warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
warnings.filterwarnings("ignore", message=r"The Attr\(force_cpu\)")

# MKL's AVX2 kernels on AMD processors (its bundled MKL would run SSE code there); before any Paddle kernel runs.
from paddle_asr.cpu_settings import choose_mkl_kernels  # noqa: E402

choose_mkl_kernels()

__version__ = "0.1.0"


def load(bundle, **options):
    """A `paddle_asr.api.SpeechRecognizer` for an exported bundle: `.transcribe(path or samples)`,
    `.stream()`. Options as `paddle_asr.api.load`. Imported on first use, so that `import paddle_asr`
    stays light."""
    from paddle_asr.api import load as load_bundle

    return load_bundle(bundle, **options)
