"""The peer: PaddleSpeech 1.5.0's U2Model on the same random batches as bench/train_step.py and
bench/rtf.py. Runs in the side environment (bash tools/setup_paddlespeech_env.sh), never in ours.
    .venv-paddlespeech/bin/python bench/peer_paddlespeech.py train --batch 8 --frames 500
    .venv-paddlespeech/bin/python bench/peer_paddlespeech.py rtf --seconds 10
Prints one JSON line in the format of our own benchmarks.
"""

from __future__ import annotations

import sys
import types


def _stub_unused_imports() -> None:
    """PaddleSpeech imports these at module level but U2 never calls them (see
    tools/make_paddlespeech_golden.py: no ctcdecoders wheel for Python 3.11, resampy/librosa heavy)."""
    for name in ("paddlespeech_ctcdecoders", "resampy", "librosa"):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__getattr__ = lambda attr: (_ for _ in ()).throw(AttributeError(attr)) if attr.startswith("__") \
                else type(attr, (), {})
            sys.modules[name] = mod


_stub_unused_imports()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from inputs import AISHELL_UNITS, random_batch  # noqa: E402

# Our encoder keys that PaddleSpeech's ConformerEncoder does not take (ours: x8 subsampling width, LN epsilon).
OURS_ONLY = {"subsampling_channels", "layer_norm_epsilon"}


def model_config(config_path: Path, vocab: int) -> dict:
    """PaddleSpeech's U2 config from one of our configs (our model keys are PaddleSpeech's names)."""
    conf = yaml.safe_load(config_path.read_text())
    model = conf["model"]
    encoder = {k: v for k, v in model["encoder"].items() if k not in OURS_ONLY}
    decoder = dict(model["decoder"])
    decoder.pop("normalize_before", None)
    return {"cmvn_file": None, "cmvn_file_type": "json", "input_dim": conf["features"]["num_mel_bins"],
            "output_dim": vocab, "encoder": model["encoder_type"], "encoder_conf": encoder,
            "decoder": "transformer", "decoder_conf": decoder,
            "model_conf": {"ctc_weight": model["ctc_weight"], "lsm_weight": model["lsm_weight"],
                           "length_normalized_loss": model["length_normalized_loss"], "init_type": "kaiming_uniform"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train", "rtf"])
    ap.add_argument("--config", default=str(ROOT / "recipes/aishell/conf/conformer.yaml"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=AISHELL_UNITS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import paddle

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(args.threads)
    paddle.seed(0)
    from paddlespeech.s2t.models.u2 import U2Model

    model = U2Model.from_config(model_config(Path(args.config), args.vocab))
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    if args.what == "train":
        model.train()
        optimizer = paddle.optimizer.Adam(learning_rate=1e-4, parameters=model.parameters(),
                                          grad_clip=paddle.nn.ClipGradByGlobalNorm(5.0))
        arrays = random_batch(args.batch, args.frames, 80, args.vocab, args.tokens)
        feats, feat_lengths, labels, label_lengths = [paddle.to_tensor(a) for a in arrays]

        def run() -> float:
            t0 = time.perf_counter()
            loss, _, _ = model(feats, feat_lengths, labels, label_lengths)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            float(loss)
            return time.perf_counter() - t0
        what = {"what": "train_step", "batch": args.batch, "frames": args.frames}
    else:
        model.eval()
        frames = int(args.seconds * 100)
        feats = paddle.to_tensor(random_batch(1, frames, 80, args.vocab, 1)[0])
        lengths = paddle.to_tensor(np.array([frames], np.int64))

        def run() -> float:
            t0 = time.perf_counter()
            with paddle.no_grad():
                encoder_out, encoder_mask = model._forward_encoder(feats, lengths)
                model.ctc.log_softmax(encoder_out).numpy()
            return time.perf_counter() - t0
        what = {"what": "encoder_ctc", "seconds": args.seconds}
    for _ in range(args.warmup):
        run()
    times = [run() for _ in range(args.repeats)]
    result = {**what, "impl": "paddlespeech-1.5.0", "mode": "dygraph", "config": Path(args.config).name,
              "threads": args.threads, "trainable_parameters": n_params, "median_s": statistics.median(times),
              "min_s": min(times), "max_s": max(times), "runs": len(times),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              # PaddleSpeech sets no MKL kernel choice; bench/run.sh can pass ours in (on AMD CPUs).
              "mkl_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE")}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
