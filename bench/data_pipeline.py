"""Training data pipeline throughput: utterances per second through reading the audio, speed
perturbation, fbank, SpecAugment and batching (stage 1's BatchLoader), with 0 and N workers; with
--cache, also an epoch after the first with training.cache_features against one without (both with
speed perturbation off, which the cache excludes, in this process).

Uses the demo recipe's stage-0 data when it is there (recipes/demo/data), else generates a small
demo corpus under exp/bench/ first.
    python bench/data_pipeline.py --workers 0,2 [--cache]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_data(work: Path) -> Path:
    data = ROOT / "recipes/demo/data"
    if (data / "train/data.list").is_file():
        return data
    from paddle_asr.config import FeatureConfig
    from paddle_asr.data.corpora.demo import generate_demo_corpus
    from paddle_asr.data.prepare import prepare_data

    data = work / "demo_data"
    if not (data / "train/data.list").is_file():
        generate_demo_corpus(work / "demo_corpus", num_train_speakers=4, num_dev_speakers=1, num_test_speakers=1,
                             utts_per_speaker=60, train_utts_per_speaker=60, num_random_voices=0,
                             log=lambda *_: None)
        prepare_data("aishell", work / "demo_corpus", data, FeatureConfig(), nj=2, log=lambda *_: None)
    return data


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "recipes/aishell/conf/conformer.yaml"))
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--utterances", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=str(ROOT / "exp" / "bench"))
    ap.add_argument("--cache", action="store_true", help="also time training.cache_features (see above)")
    args = ap.parse_args(argv)

    from paddle_asr.config import load_config
    from paddle_asr.data.loader import TrainingInputs
    from paddle_asr.data.manifest import read_manifest
    from paddle_asr.data.sampler import plan_batches
    from paddle_asr.data.tokenizer import load_tokenizer

    config = load_config(Path(args.config))
    data = demo_data(Path(args.work))
    utts = read_manifest(data / "train/data.list")[: args.utterances]
    tokenizer = load_tokenizer(data / "lang_char/vocab.txt", "char")
    inputs = TrainingInputs(tokenizer, config.features, config.spec_augment, config.speed_perturb, 1)
    plan = plan_batches(utts, config.features, batch_size=args.batch)
    audio_seconds = sum(u.duration for u in utts)
    runs = [(inputs, int(w)) for w in args.workers.split(",")]
    if args.cache:
        plain = dataclasses.replace(inputs, speed_perturb=dataclasses.replace(config.speed_perturb, enabled=False))
        runs += [(plain, 0), (dataclasses.replace(plain, cache_features=True), 0)]
    results = []
    for run_inputs, workers in runs:
        times, count = _time_epochs(run_inputs, workers, plan, args.repeats)
        median = statistics.median(times)
        result = {"what": "data_pipeline", "impl": "paddle-asr", "workers": workers, "utterances": count,
                  "audio_seconds": round(audio_seconds, 1), "batch": args.batch,
                  "speed_perturb": run_inputs.speed_perturb.enabled, "spec_augment": config.spec_augment.enabled,
                  "cache_features": run_inputs.cache_features,
                  "median_s": median, "min_s": min(times), "max_s": max(times), "runs": len(times),
                  "utterances_per_s": count / median}
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def _time_epochs(inputs, workers: int, plan, repeats: int) -> tuple[list[float], int]:
    """Seconds of each epoch after the first, which warms the file cache and the workers (and fills
    the feature cache when there is one)."""
    from paddle_asr.data.loader import BatchLoader

    times, count = [], 0
    with BatchLoader(inputs, workers) as loader:
        for epoch in range(repeats + 1):
            t0 = time.perf_counter()
            count = sum(len(b.keys) for b in loader.batches(plan.batches, epoch))
            if epoch:
                times.append(time.perf_counter() - t0)
    return times, count


if __name__ == "__main__":
    main()
