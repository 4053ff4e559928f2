"""JSON lines of the benchmarks (stdin or files) -> a markdown report with the machine, every
figure as median [min-max], and ours/PaddleSpeech ratios where both ran the same thing."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def machine() -> str:
    from paddle_asr.devices import cpu_model

    cpu = cpu_model()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import version

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f" {f} " in flags) or "no AVX2"
    if " avx512f " not in flags:
        isa += ", no AVX-512 or VNNI"
    return (f"{cpu} ({isa}), {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
            f"paddlepaddle {version('paddlepaddle')} (CPU)")


def fmt(r: dict) -> str:
    return f"{r['median_s']:.3f} s [{r['min_s']:.3f}-{r['max_s']:.3f}]"


def main() -> None:
    rows = [json.loads(line) for f in (sys.argv[1:] or ["-"]) for line in (sys.stdin if f == "-" else open(f))
            if line.startswith("{")]
    out = [f"Machine: {machine()}", "", "Each figure: median [min-max] of the timed runs after warm-up.", ""]
    train = [r for r in rows if r["what"] == "train_step" and r.get("model", "u2") == "u2"]
    if train:
        mkl = {r.get("mkl_cpu_type") for r in train if r["impl"] == "paddle-asr"} - {None}
        with_mkl = any(r["impl"] != "paddle-asr" and r.get("mkl_cpu_type") for r in train)
        mkl_name = "/".join(sorted(mkl))
        extra_head = (f" | PaddleSpeech with MKL_DEBUG_CPU_TYPE={mkl_name} (the setting ours makes) | ours/that"
                      if with_mkl else "")
        out += ["### Training step (AISHELL Conformer, forward + backward + Adam update, random features)", "",
                "Rounds alternate ours and theirs; each row is one round. PaddleSpeech runs as its users run it"
                + (", and again with the MKL kernel choice that ours makes on this CPU (`paddle_asr/cpu_settings.py`)."
                   if with_mkl else ".")
                + " Ours ran with its compiled CPU training kernels (`paddle_asr/models/cpu_kernels.cc`): "
                + "/".join(sorted({str(r.get("cpu_kernels")) for r in train if r["impl"] == "paddle-asr"})) + ".", "",
                "| batch x frames | round | ours | PaddleSpeech 1.5.0 U2Model | ours/theirs" + extra_head
                + " | peak RSS ours / theirs |", "|---|---|---|---|---|" + ("---|---|" if with_mkl else "") + "---|"]
        for b in sorted({(r["batch"], r["frames"]) for r in train}):
            same = [r for r in train if (r["batch"], r["frames"]) == b]
            ours = [r for r in same if r["impl"] == "paddle-asr"]
            theirs = [r for r in same if r["impl"] != "paddle-asr" and not r.get("mkl_cpu_type")]
            theirs_mkl = [r for r in same if r["impl"] != "paddle-asr" and r.get("mkl_cpu_type")]
            for i, (o, t) in enumerate(zip(ours, theirs), 1):
                extra = ""
                if with_mkl:
                    m = theirs_mkl[i - 1] if i <= len(theirs_mkl) else None
                    extra = f" | {fmt(m)} | {o['median_s'] / m['median_s']:.2f}" if m else " | | "
                ratio = o["median_s"] / t["median_s"]
                out.append(f"| {b[0]} x {b[1]} | {i} | {fmt(o)} | {fmt(t)} | {ratio:.2f}{extra} | "
                           f"{o['peak_rss_mb'] / 1024:.2f} / {t['peak_rss_mb'] / 1024:.2f} GB |")
        out.append("")
    ds2 = [r for r in rows if r["what"] == "train_step" and r.get("model") == "deepspeech2"]
    if ds2:
        millions = ds2[0]["trainable_parameters"] / 1e6
        out += [f"### Training step (AISHELL DeepSpeech2, {millions:.1f} M parameters, ours)", "",
                "| batch x frames | time | peak RSS |", "|---|---|---|"]
        out += [f"| {r['batch']} x {r['frames']} | {fmt(r)} | {r['peak_rss_mb'] / 1024:.2f} GB |" for r in ds2]
        out.append("")
    rtf = [r for r in rows if r["what"] == "encoder_ctc"]
    if rtf:
        out += ["### Encoder + CTC log-probabilities, one 10 s utterance", "",
                "| implementation | threads | time | RTF | PaddleSpeech dygraph / this |", "|---|---|---|---|---|"]
        for r in rtf:
            peer = [p for p in rtf
                    if p["impl"] != "paddle-asr" and p["threads"] == r["threads"] and not p.get("mkl_cpu_type")]
            ratio = f"{peer[-1]['median_s'] / r['median_s']:.2f}x" if peer else ""
            name = f"{r['impl']} {r['mode']}"
            if r["impl"] != "paddle-asr" and r.get("mkl_cpu_type"):
                name += f" (MKL_DEBUG_CPU_TYPE={r['mkl_cpu_type']})"
            out.append(f"| {name} | {r['threads']} | {fmt(r)} | {r['median_s'] / r['seconds']:.4f} | {ratio} |")
        out.append("")
    data = [r for r in rows if r["what"] == "data_pipeline"]
    if data:
        out += ["### Data pipeline (read, speed perturbation, fbank, SpecAugment, batches)", "",
                "| workers | utterances | speed perturbation | SpecAugment | time | utterances/s |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['workers']} | {r['utterances']} ({r['audio_seconds']:.0f} s of audio) | {r['speed_perturb']} | "
                f"{r['spec_augment']} | {fmt(r)} | {r['utterances_per_s']:.0f} |" for r in data]
        out.append("")
    demo = [r for r in rows if r["what"] == "demo"]
    if demo:
        out += ["### The whole demo (`bash run.sh`, stages -1..7)", ""]
        out += [f"- {r['seconds'] / 60:.1f} min wall ({r['note']})" for r in demo]
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
