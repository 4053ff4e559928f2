"""Attention beam search on an exported bundle: the whole-prefix decoder against the step program.

    python bench/attention_search.py --bundle recipes/demo/exp/conformer/export/fp32 \
        --data recipes/demo/data/test/data.list --decode_config recipes/demo/conf/decode.yaml [--runtime onnx]

Decodes the manifest with `attention` alone, alternating the two ways (`decoder` over each whole
prefix every step, and `decoder_step`: one token a step with the keys and values cached), and prints
one JSON line per run (search seconds, encoder seconds) and whether the hypotheses are the same.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paddle_asr.config import load_decode_config
from paddle_asr.evaluate import decode_manifest
from paddle_asr.export.bundle import read_bundle
from paddle_asr.export.runtime import load_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="an exported U2 bundle (stage 4 or 6)")
    parser.add_argument("--data", type=Path, required=True, help="a manifest (data.list)")
    parser.add_argument("--decode_config", type=Path, required=True)
    parser.add_argument("--runtime", default="", help="paddle or onnx (default: the bundle's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    meta, features, tokenizer = read_bundle(args.bundle)
    backend = load_backend(args.bundle, meta, num_threads=args.threads, runtime=args.runtime)
    step_cache = backend.decoder_step_cache
    if step_cache is None:
        raise SystemExit(f"{args.bundle}: no decoder_step program to compare (export it again with stage 4)")
    conf = load_decode_config(args.decode_config)
    conf.methods = ["attention"]
    found = {}
    for _ in range(args.rounds):
        for way, cache in (("whole prefix", None), ("step", step_cache)):
            backend.decoder_step_cache = cache
            hyps, _, seconds, audio = decode_manifest(backend, conf, args.data, tokenizer, features)
            found.setdefault(way, hyps["attention"])
            print(json.dumps({"decoder": way, "runtime": type(backend).__name__,
                              "search_s": round(seconds["attention"], 2), "encoder_s": round(seconds["encoder"], 2),
                              "audio_s": round(audio, 1)}), flush=True)
    same = found["whole prefix"] == found["step"]
    print(json.dumps({"same_hypotheses": same, "utterances": len(found["step"])}))


if __name__ == "__main__":
    main()
