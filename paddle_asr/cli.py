"""The `paddle-asr` command: one subcommand per recipe stage, plus transcribe and score.

Stages run with the recipe directory as the working directory; relative paths in configs are
relative to it. A user-fixable problem ends with `error: <message>` and exit status 1, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paddle_asr.errors import AsrError, TrainingStopped


def log(msg: str) -> None:
    print(msg, flush=True)


def _exp_config(exp_dir: Path):
    from paddle_asr.config import load_config

    path = Path(exp_dir) / "train.yaml"
    if not path.is_file():
        raise AsrError(f"{path} does not exist; run stage 1 (training) first - later stages read the config it saved")
    return load_config(path)


def _checkpoint(args, config) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from paddle_asr.train.checkpoint import averaged_name

    return Path(args.exp_dir) / "checkpoints" / averaged_name(config.training.average_num, config.training.average_mode)


def _load_dygraph(exp_dir: Path, checkpoint: Path):
    from paddle_asr.cpu_settings import configure_cpu
    from paddle_asr.models.registry import build_model, load_weights

    config = _exp_config(exp_dir)
    configure_cpu(config.training.num_threads)
    model = build_model(config)
    load_weights(model, checkpoint)
    model.eval()
    return config, model


def _parse_sets(spec: str) -> dict[str, list[str]] | None:
    """`--sets "train_960=train-clean-100,train-clean-360 dev=dev-clean,dev-other"` -> {set: [subsets]}."""
    if not spec.strip():
        return None
    sets: dict[str, list[str]] = {}
    for item in spec.split():
        name, eq, subsets = item.partition("=")
        parts = [p for p in subsets.split(",") if p]
        if not eq or not name or not parts or not name.replace("_", "").isalnum():
            raise AsrError(f"--sets: '{item}' is not NAME=SUBSET[,SUBSET...] (e.g. dev=dev-clean,dev-other)")
        if name in sets:
            raise AsrError(f"--sets names the set '{name}' twice")
        sets[name] = parts
    return sets


def cmd_get_librispeech(args) -> int:
    from paddle_asr.data.corpora.librispeech import fetch_subsets

    fetch_subsets(Path(args.data_dir), [s for s in args.subsets.split(",") if s], base_url=args.base_url, log=log)
    return 0


def cmd_prepare(args) -> int:
    from paddle_asr.config import load_config
    from paddle_asr.data.prepare import prepare_cmvn, prepare_data, train_set_name

    if args.shards < 0:
        raise AsrError(f"--shards must be 0 (no shards) or the utterances per shard, got {args.shards}")
    config = load_config(Path(args.config))
    data_dir = Path(args.data_dir)
    train_set = train_set_name(config.data)
    if args.train_set and args.train_set != train_set:
        raise AsrError(f"--train_set {args.train_set}, but {args.config} trains on data.train: {config.data.train}; "
                       f"set data.train: data/{args.train_set}/data.list (and data.cmvn beside it) in the config")
    prepare_data(args.corpus, Path(args.corpus_dir), data_dir, config.features, config.data, sets=_parse_sets(args.sets),
                 nj=args.nj, force=args.force, log=log)
    # The config names the file as training reads it (data/<train set>/<name>, from the recipe);
    # stage 0 writes that name under --data_dir, wherever it is.
    prepare_cmvn(data_dir, config.features, data_dir / train_set / Path(config.data.cmvn).name, nj=args.nj,
                 force=args.force, log=log, train_set=train_set)
    if args.shards:
        from paddle_asr.data.manifest import read_manifest
        from paddle_asr.data.shards import write_shards

        listing = write_shards(read_manifest(data_dir / train_set / "data.list"), data_dir / train_set / "shards",
                               args.shards, log=log)
        log(f"stage 0: training shard list -> {listing}")
    return 0


def cmd_train(args) -> int:
    import subprocess

    from paddle_asr.config import load_config
    from paddle_asr.train.distributed import launch_command
    from paddle_asr.train.trainer import prepare_run, run_training

    exp_dir = Path(args.exp_dir)
    if args.worker:  # started by paddle.distributed.launch: the parent prepared exp_dir
        run_training(Path.cwd(), exp_dir, use_gpu=bool(args.gpus), log=log)
        return 0
    if args.gpus:  # before any process starts: a CPU build of Paddle cannot train on GPUs
        from paddle_asr.devices import require

        require("cuda", f"--gpus {args.gpus} (training on GPUs; --nproc N trains with CPU processes)")
        if "," in args.gpus or args.ips:
            require("nccl", "data-parallel training on several GPUs")
    if prepare_run(load_config(Path(args.config)), Path.cwd(), exp_dir, force=args.force, log=log) is None:
        return 0
    if args.nproc <= 1 and not args.gpus and not args.ips:
        run_training(Path.cwd(), exp_dir, log=log)
        return 0
    train_args = ["train", "--config", args.config, "--exp_dir", args.exp_dir] + (["--gpus", args.gpus] if args.gpus else [])
    cmd = launch_command(train_args, nproc=args.nproc, gpus=args.gpus, ips=args.ips, log_dir=exp_dir / "launch")
    log(f"stage 1: data-parallel training: {' '.join(cmd)}")
    if subprocess.run(cmd).returncode != 0:
        raise AsrError(f"data-parallel training failed; each process's output is in {exp_dir / 'launch'}/workerlog.N")
    return 0


def cmd_average(args) -> int:
    from paddle_asr.artifacts import atomic_write_text, fingerprint
    from paddle_asr.train.checkpoint import average_checkpoints, averaged_name, list_checkpoints

    config = _exp_config(Path(args.exp_dir))
    num = args.num or config.training.average_num
    mode = args.mode or config.training.average_mode
    ckpt_dir = Path(args.exp_dir) / "checkpoints"
    out = ckpt_dir / averaged_name(num, mode)
    fp = fingerprint("average-v2", num, mode, [Path(r["path"]) for r in list_checkpoints(ckpt_dir)])
    record = out.with_suffix(".json")
    if not args.force and out.is_file() and record.is_file() and json.loads(record.read_text()).get("fingerprint") == fp:
        log(f"stage 2 (average): reusing {out} (same checkpoints; --force rebuilds)")
        return 0
    provenance = average_checkpoints(ckpt_dir, num, out, mode=mode, log=log)
    atomic_write_text(record, json.dumps({**provenance, "fingerprint": fp}, indent=1))
    return 0


def _decode_config(args):
    from paddle_asr.config import load_decode_config

    conf = load_decode_config(Path(args.decode_config))
    if args.batch_size:
        conf.batch_size = args.batch_size
    return conf


def _evaluate_stage(args, label: str, make_backend, decode_conf, features, tokenizer, inputs: list[Path],
                    extra: dict, base_prefix: Path) -> Path:
    """Decode with every method unless all of their result directories are complete for these inputs."""
    import dataclasses

    from paddle_asr.artifacts import fingerprint, is_complete, mark_complete
    from paddle_asr.evaluate import evaluate, mode_prefix, result_dir

    prefix = base_prefix.parent / mode_prefix(base_prefix.name, decode_conf)
    dirs = [result_dir(prefix, m) for m in decode_conf.methods]
    fp = fingerprint(label, dataclasses.asdict(decode_conf), *inputs)
    if not args.force and all(is_complete(d, fp) for d in dirs):
        for d in dirs:
            r = json.loads((d / "result.json").read_text(encoding="utf-8"))
            log(f"{label} {r['search']}: {r.get('metric', 'CER')} {r['cer']:.2f} % RTF {r['rtf']:.4f} (reused {d}; --force redoes)")
        return prefix
    # The data set is the manifest's folder (data/test_clean/data.list -> test_clean).
    extra = {"test_set": Path(args.data).parent.name, **extra}
    evaluate(make_backend(), decode_conf, Path(args.data), tokenizer, features, prefix, label=label, extra=extra, log=log)
    for d in dirs:
        mark_complete(d, fp)
    return prefix


def cmd_test(args) -> int:
    from paddle_asr.data.tokenizer import load_tokenizer

    exp_dir = Path(args.exp_dir)
    config = _exp_config(exp_dir)
    checkpoint = _checkpoint(args, config)
    decode_conf = _decode_config(args)

    def backend():
        from paddle_asr.decode.dygraph_backend import dygraph_backend

        return dygraph_backend(_load_dygraph(exp_dir, checkpoint)[1])

    tokenizer = load_tokenizer(Path(config.data.vocab), config.data.units)
    extra = {"model": "dygraph", "checkpoint": str(checkpoint), "decode_config": args.decode_config}
    _evaluate_stage(args, "stage 3 (dynamic graph)", backend, decode_conf, config.features, tokenizer,
                    [exp_dir / "train.yaml", checkpoint, Path(args.data)], extra, Path(args.out_prefix or exp_dir / "test"))
    return 0


def cmd_export(args) -> int:
    from paddle_asr.artifacts import fingerprint, is_complete, mark_complete
    from paddle_asr.export.bundle import write_bundle_files
    from paddle_asr.export.export import export_model

    exp_dir = Path(args.exp_dir)
    config = _exp_config(exp_dir)
    checkpoint = _checkpoint(args, config)
    out = Path(args.out)
    fp = fingerprint("export-v2", exp_dir / "train.yaml", checkpoint)
    if not args.force and is_complete(out, fp):
        log(f"stage 4 (export): reusing the complete export in {out} (same checkpoint; --force rebuilds)")
        return 0
    config, model = _load_dygraph(exp_dir, checkpoint)
    # export_model writes atomically and checks every program against the dynamic graph itself.
    diffs = export_model(model, config.input_dim, out)
    write_bundle_files(out, config, Path(config.data.vocab), model, checkpoint=str(checkpoint), functions=sorted(diffs))
    mark_complete(out, fp)
    log(f"stage 4 (export): {', '.join(sorted(diffs))} (CMVN inside; max |diff| vs dynamic graph "
        f"{max(diffs.values()):.1e}) -> {out}")
    return 0


def _compare_with(ours_prefix: Path, theirs_prefix: Path, methods: list[str]) -> int:
    """Stage 5's promise: the exported model gives stage 3's hypothesis on every utterance, for every method."""
    from paddle_asr.evaluate import read_hypotheses, result_dir

    failed = 0
    for method in methods:
        theirs_dir = result_dir(theirs_prefix, method)
        if not (theirs_dir / "text").is_file():
            log(f"stage 5: no dynamic-graph result in {theirs_dir} to compare {method} with (run stage 3)")
            failed += 1
            continue
        ours, theirs = read_hypotheses(result_dir(ours_prefix, method)), read_hypotheses(theirs_dir)
        differ = sorted(k for k in theirs if ours.get(k) != theirs[k])
        if differ:
            for k in differ[:10]:
                log(f"  {method} {k}: dynamic graph '{theirs[k]}' vs exported '{ours.get(k)}'")
            log(f"error: {method}: the exported model differs from {theirs_dir} on {len(differ)} of {len(theirs)} utterances")
            failed += 1
        else:
            log(f"stage 5: {method}: same hypothesis as the dynamic graph on all {len(theirs)} utterances")
    return 1 if failed else 0


def cmd_test_export(args) -> int:
    from paddle_asr.evaluate import mode_prefix
    from paddle_asr.export.bundle import bundle_bytes, read_bundle

    model_dir = Path(args.model)
    gpu = _gpu_inference(args)
    meta, features, tokenizer = read_bundle(model_dir)
    int8 = meta.get("precision") == "int8"
    if gpu and gpu.tensorrt and gpu.tensorrt != ("int8" if int8 else "fp16"):
        raise AsrError(f"--trt {args.trt} does not fit {args.model}: TensorRT FP16 takes the FP32 export (stage 4), "
                       "TensorRT INT8 takes the PaddleSlim INT8 bundle (stage 6), whose scales it reads")
    decode_conf = _decode_config(args)
    engine = f", TensorRT {args.trt.upper()} on GPU {gpu.device_id}" if gpu and gpu.tensorrt else (", GPU" if gpu else "")
    label = f"stage {'6' if int8 else '5'} (exported {'INT8' if int8 else 'FP32'}{engine})"
    extra = {"model": f"inference-{meta.get('precision')}" + (f"-tensorrt-{args.trt}" if args.trt else "-gpu" if gpu else ""),
             "model_bytes": bundle_bytes(model_dir), "threads": args.threads, "decode_config": args.decode_config}

    def backend():
        from paddle_asr.export.runtime import ExportedBackend

        return ExportedBackend(model_dir, meta, num_threads=args.threads, gpu=gpu)

    prefix = _evaluate_stage(args, label, backend, decode_conf, features, tokenizer,
                             [model_dir / ".done", Path(args.data)], extra, Path(args.out_prefix))
    if args.compare_prefix:
        theirs = Path(args.compare_prefix)
        return _compare_with(prefix, theirs.parent / mode_prefix(theirs.name, decode_conf), decode_conf.methods)
    return 0


def _gpu_inference(args):
    """`--device`/`--trt` as GpuInference (None: CPU), refused up front when this Paddle cannot."""
    from paddle_asr.export.inference import GpuInference, require_gpu_inference

    if args.device == "cpu" and not args.trt:
        return None
    if args.device == "cpu":
        raise AsrError(f"--trt {args.trt} runs on a GPU: add --device gpu (or gpu:N)")
    if args.device != "gpu" and not (args.device.startswith("gpu:") and args.device[4:].isdigit()):
        raise AsrError(f"--device {args.device}: use cpu, gpu or gpu:N")
    gpu = GpuInference(int(args.device[4:] or 0) if ":" in args.device else 0, args.trt)
    require_gpu_inference(gpu)
    return gpu


def _fp32_layers(option: str, model: str) -> tuple[str, ...]:
    """The ``--fp32_layers`` choice as edge-layer names (see quantize.edge_layer_weights)."""
    from paddle_asr.cpu_settings import cpu_has_vnni
    from paddle_asr.export.quantize import EDGE_LAYERS, default_fp32_layers

    if option == "auto":
        return default_fp32_layers(model, cpu_has_vnni())
    if option == "none":
        return ()
    layers = tuple(x for x in option.split(",") if x)
    unknown = [x for x in layers if x not in EDGE_LAYERS]
    if unknown or not layers:
        raise AsrError(f"--fp32_layers {option}: choose auto, none, or a comma-separated list of {', '.join(EDGE_LAYERS)}")
    return layers


def cmd_quantize(args) -> int:
    import shutil

    from paddle_asr.artifacts import atomic_directory, atomic_write_text, fingerprint, is_complete, mark_complete
    from paddle_asr.cpu_settings import cpu_has_vnni
    from paddle_asr.data.dataset import iterate_batches, make_batches
    from paddle_asr.data.manifest import read_manifest
    from paddle_asr.export.bundle import copy_bundle_files, read_bundle
    from paddle_asr.export.quantize import quantize_ptq

    fp32_dir, out = Path(args.model), Path(args.out)
    meta, features, tokenizer = read_bundle(fp32_dir)
    if not cpu_has_vnni():
        log("stage 6 (INT8): warning: this CPU has no VNNI (AVX-512 VNNI, AVX-VNNI or AMX). oneDNN's INT8 "
            "kernels here sum 8-bit products in 16 bits, which saturate, and gain little over FP32 (measured on "
            "an AMD EPYC Zen 3: 1.0-1.4x). Expect a higher error rate than FP32; for INT8, quantize and run on a "
            "CPU with VNNI (Intel Cascade Lake or later, AMD Zen 4 or later). See README 'INT8'.")
    fp32_layers = _fp32_layers(args.fp32_layers, meta.get("model", ""))
    fp = fingerprint("quantize-v3", fp32_dir / ".done", Path(args.calib), args.num_calib, args.batch_size, args.functions,
                     ",".join(fp32_layers))
    if not args.force and is_complete(out, fp):
        log(f"stage 6 (INT8): reusing the complete INT8 model in {out} (--force rebuilds)")
        return 0
    utts = read_manifest(Path(args.calib))
    # Calibrate on training utterances only (never test), spread over the length range.
    step = max(1, len(utts) // args.num_calib)
    chosen = sorted(utts, key=lambda u: u.key)[::step][: args.num_calib]

    functions = [f for f in args.functions.split(",") if f]
    unknown = [f for f in functions if f not in ("encoder", "decoder")]
    if unknown or not functions:
        raise AsrError(f"--functions {args.functions}: quantizable programs are encoder and decoder")
    absent = [f for f in functions if f not in meta.get("functions", [])]
    if absent:  # e.g. decoder of a DeepSpeech2 (CTC-only) bundle
        raise AsrError(f"--functions {args.functions}: {fp32_dir} has no {', '.join(absent)} program; its "
                       f"{meta.get('model')} model exports {', '.join(meta.get('functions', []))}")

    def encoder_batches():
        for b in iterate_batches(make_batches(chosen, args.batch_size), tokenizer, features, train=False):
            yield b.feats, b.feat_lengths

    def decoder_batches():
        # Teacher forcing on the calibration utterances: `<sos> transcript` against the FP32
        # encoder's output, the inputs the decoder meets in rescoring and beam search.
        from paddle_asr.decode.search import pad_hypotheses
        from paddle_asr.export.runtime import ExportedBackend

        backend = ExportedBackend(fp32_dir, meta)
        for b in iterate_batches(make_batches(chosen, args.batch_size), tokenizer, features, train=False):
            enc, enc_lengths, _ = backend.encode(b.feats, b.feat_lengths)
            hyps, lengths = pad_hypotheses([list(row[:n]) for row, n in zip(b.labels, b.label_lengths)], backend.sos, backend.eos)
            yield {"hyps": hyps, "hyps_lengths": lengths, "encoder_out": enc, "encoder_lengths": enc_lengths}

    reports = {}
    with atomic_directory(out) as tmp:
        for name in meta.get("functions", []):
            if name in functions:
                reports[name] = quantize_ptq(fp32_dir / name, tmp / name,
                                             encoder_batches if name == "encoder" else decoder_batches,
                                             fp32_layers=fp32_layers)
            else:
                shutil.copytree(fp32_dir / name, tmp / name)
        copy_bundle_files(fp32_dir, tmp, precision="int8", int8_functions=functions,
                          calibration={"manifest": args.calib, "utterances": len(chosen)})
        atomic_write_text(tmp / "quantize_report.json", json.dumps(reports, indent=1))
    mark_complete(out, fp)
    for name, report in reports.items():
        log(f"stage 6 (INT8): {name} calibrated on {len(chosen)} training utterances; quantized ops "
            f"{report.get('quantized_ops')}; left in FP32 {report.get('fp32_ops')}; "
            f"{report['fp32_bytes'] / 1e6:.2f} MB FP32 -> {report['int8_bytes'] / 1e6:.2f} MB INT8")
    log(f"stage 6 (INT8): other programs stay FP32 -> {out}")
    return 0


def cmd_import_paddlespeech(args) -> int:
    from paddle_asr.import_paddlespeech import import_paddlespeech

    import_paddlespeech(Path(args.folder), Path(args.exp_dir), config_path=Path(args.config) if args.config else None,
                        checkpoint=Path(args.checkpoint) if args.checkpoint else None, log=log)
    return 0


def cmd_transcribe(args) -> int:
    from paddle_asr.data.audio_inputs import collect_inputs
    from paddle_asr.data.vad import VadConfig
    from paddle_asr.transcribe import TranscribeOptions, transcribe_inputs

    inputs, problems = collect_inputs(args.audio)
    for where, reason in problems:
        print(f"error: {where}: {reason}", file=sys.stderr, flush=True)
    options = TranscribeOptions(
        method=args.method, chunk_size=args.chunk_size, beam_size=args.beam_size, batch_size=args.batch_size,
        segment_over=args.segment_over, num_threads=args.threads,
        vad=VadConfig(aggressiveness=args.vad_aggressiveness, max_segment=args.max_segment))
    failures = transcribe_inputs(Path(args.model), inputs, options, output_format=args.format,
                                 show_progress={"auto": None, "on": True, "off": False}[args.progress]) if inputs else []
    bad = [where for where, _ in problems] + [path for path, _ in failures]
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        print(f"error: {len(bad)} input(s) could not be transcribed: {shown}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_results(args) -> int:
    from paddle_asr.results import write_results

    write_results(Path(args.exp_dir), Path(args.results_md), log=log)
    return 0


def cmd_build_lm(args) -> int:
    from paddle_asr.artifacts import atomic_write_text, fingerprint
    from paddle_asr.lm.build import build_lm

    out = Path(args.out)
    record = out.with_name(out.name + ".done")
    inputs = [Path(p) for p in (args.text, args.units, args.dev) if p]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise AsrError(f"build-lm: {', '.join(missing)} not found; run stage 0 (data preparation) first")
    fp = fingerprint("build-lm-v1", args.order, args.format, args.keep_spaces, *inputs)
    if not args.force and out.is_file() and record.is_file() and record.read_text().strip() == fp:
        log(f"build-lm: reusing {out} (same transcripts and settings; --force rebuilds)")
        return 0
    record.unlink(missing_ok=True)
    build_lm(
        Path(args.text),
        Path(args.out),
        order=args.order,
        fmt=args.format,
        keep_spaces=args.keep_spaces,
        units=Path(args.units) if args.units else None,
        dev_text=Path(args.dev) if args.dev else None,
        log=log,
    )
    atomic_write_text(record, fp)
    return 0


def cmd_make_demo_corpus(args) -> int:
    from paddle_asr.data.corpora import demo

    argv = ["--out_dir", args.out_dir] + (["--force"] if args.force else [])
    return demo.main(argv)


def cmd_make_librispeech_demo(args) -> int:
    from paddle_asr.data.corpora import english_demo

    argv = ["--out_dir", args.out_dir] + (["--force"] if args.force else [])
    return english_demo.main(argv)


def cmd_make_long_recording(args) -> int:
    from paddle_asr.data.long_recording import write_long_recording
    from paddle_asr.data.manifest import read_manifest

    parts = write_long_recording(read_manifest(Path(args.data)), Path(args.out), args.seconds, args.sample_rate, seed=args.seed)
    log(f"{args.out}: {len(parts)} utterances of {args.data} with silences between, {parts[-1]['end']:.1f} s of "
        f"speech span; parts in {Path(args.out).with_suffix('.parts.json')}, reference in {Path(args.out).with_suffix('.text')}")
    return 0


def cmd_long_recording_report(args) -> int:
    from paddle_asr.data.long_recording import compare_with_parts

    parts = json.loads(Path(args.parts).read_text(encoding="utf-8"))
    transcript = json.loads(Path(args.transcript).read_text(encoding="utf-8").splitlines()[0])
    r = compare_with_parts(parts, transcript)
    o = r["report"].overall
    log(f"long recording {transcript['duration']:.1f} s: {r['segments']} VAD segments for {r['parts']} utterances "
        f"({'one segment each' if r['one_to_one'] else 'NOT one segment per utterance'}); times "
        f"{'increase monotonically' if r['times_increase'] else 'DO NOT increase monotonically'}; "
        f"{r['report'].metric} of the segments against their utterances {o.rate:.2f} % (N={o.n} S={o.s} D={o.d} I={o.i})")
    for key, ref, hyp in r["pairs"]:
        log(f"  {key}  ref {ref}\n  {' ' * len(key)}  hyp {hyp}")
    return 0  # a report: a real corpus may hold pauses that split an utterance


def score_main(argv: list[str]) -> int:
    from paddle_asr.metrics import score

    return score.main(argv)


def cmd_devices(args) -> int:
    from paddle_asr.devices import accelerator_features, format_report

    features = accelerator_features()
    print(format_report(features), flush=True)
    unknown = [name for name in args.require if name not in {f.name for f in features}]
    if unknown:
        raise AsrError(f"--require {','.join(unknown)}: features are {', '.join(f.name for f in features)}")
    missing = [f"{f.name} ({f.detail})" for f in features if f.name in args.require and not f.available]
    if missing:
        print(f"error: unavailable here: {'; '.join(missing)}", file=sys.stderr, flush=True)
        return 3
    return 0


def cmd_dashboard(args) -> int:
    from paddle_asr.dashboard import serve_dashboard

    return serve_dashboard(Path(args.logdir), host=args.host, port=args.port)


def cmd_score(args) -> int:
    return score_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paddle-asr", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(func=func)
        return sp

    sp = add("make-demo-corpus", cmd_make_demo_corpus, "synthesise the embedded Mandarin corpus (AISHELL layout)")
    sp.add_argument("--out_dir", required=True)
    sp.add_argument("--force", action="store_true")

    sp = add("make-librispeech-demo", cmd_make_librispeech_demo,
             "synthesise the embedded English corpus (LibriSpeech layout, FLAC)")
    sp.add_argument("--out_dir", required=True)
    sp.add_argument("--force", action="store_true")

    sp = add("get-librispeech", cmd_get_librispeech,
             "stage -1: download (resuming, md5-checked) and unpack LibriSpeech subsets not yet in data_dir")
    sp.add_argument("--data_dir", required=True, help="folder for the archives; they unpack to data_dir/LibriSpeech")
    sp.add_argument("--subsets", required=True, help="comma-separated, e.g. train-clean-100,dev-clean,test-clean")
    sp.add_argument("--base_url", default="https://www.openslr.org/resources/12/", help="mirror of OpenSLR 12")

    sp = add("prepare", cmd_prepare, "stage 0: manifests, units, CMVN")
    sp.add_argument("--corpus", default="aishell")
    sp.add_argument("--corpus_dir", required=True)
    sp.add_argument("--data_dir", default="data")
    sp.add_argument("--config", required=True, help="the training config (its features and data sections are used)")
    sp.add_argument("--sets", default="", help='data sets as corpus subsets, e.g. "train_960=train-clean-100,'
                    'train-clean-360,train-other-500 dev=dev-clean,dev-other test_clean=test-clean" (LibriSpeech)')
    sp.add_argument("--train_set", default="", help="check that the config trains on data/<train_set>")
    sp.add_argument("--nj", type=int, default=2)
    sp.add_argument("--force", action="store_true")
    sp.add_argument("--shards", type=int, default=0, metavar="N",
                    help="also write the training set as tar shards of N utterances in data_dir/train/shards (0: off)")

    sp = add("train", cmd_train, "stage 1: train (resumes an unfinished run); writes exp_dir/train.yaml and checkpoints")
    sp.add_argument("--config", required=True)
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--force", action="store_true", help="start over even when a run can be reused or resumed")
    sp.add_argument("--nproc", type=int, default=1, help="data-parallel CPU processes (paddle.distributed.launch)")
    sp.add_argument("--gpus", default="", help="GPU ids for data-parallel training, one process each, e.g. 0,1,2,3")
    sp.add_argument("--ips", default="", help="several machines: their IPs (run the same command on each)")
    sp.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    sp = add("average", cmd_average, "stage 2: average the N checkpoints with the lowest dev loss")
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--num", type=int, default=0, help="default: training.average_num of the config")
    sp.add_argument("--mode", default="", choices=["", "best", "last"],
                    help="best: lowest dev loss; last: latest epochs (default: training.average_mode)")
    sp.add_argument("--force", action="store_true")

    sp = add("test", cmd_test, "stage 3: decode a test set with the dynamic-graph model, every method of the decode config")
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--checkpoint", default="", help="default: exp_dir/checkpoints/avg_<average_num>.pdparams")
    sp.add_argument("--data", required=True, help="manifest (data.list) of the test set")
    sp.add_argument("--decode_config", required=True, help="conf/decode.yaml (full) or conf/chunk_decode.yaml (streaming)")
    sp.add_argument("--out_prefix", default="", help="results go to <prefix>[_chunkN]_<method>/ (default exp_dir/test)")
    sp.add_argument("--batch_size", type=int, default=0, help="override the decode config's batch_size")
    sp.add_argument("--force", action="store_true")

    sp = add("export", cmd_export, "stage 4: export the runtime programs (encoder, encoder_chunk, ctc_activation, decoder)")
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--checkpoint", default="", help="default: exp_dir/checkpoints/avg_<average_num>.pdparams")
    sp.add_argument("--out", required=True)
    sp.add_argument("--force", action="store_true")

    sp = add("test-export", cmd_test_export, "stages 5/6: decode a test set with an exported model (Paddle Inference)")
    sp.add_argument("--model", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--decode_config", required=True)
    sp.add_argument("--out_prefix", required=True, help="results go to <prefix>[_chunkN]_<method>/")
    sp.add_argument("--compare_prefix", default="", help="stage-3 prefix whose hypotheses must be reproduced exactly")
    sp.add_argument("--batch_size", type=int, default=0)
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--device", default="cpu", help="cpu (oneDNN), gpu or gpu:N (Paddle Inference on CUDA)")
    sp.add_argument("--trt", default="", choices=["", "fp16", "int8"],
                    help="with --device gpu: TensorRT FP16 (FP32 export) or INT8 (the PaddleSlim INT8 bundle)")
    sp.add_argument("--force", action="store_true")

    sp = add("quantize", cmd_quantize, "stage 6: PaddleSlim post-training INT8 quantization of the encoder")
    sp.add_argument("--model", required=True, help="FP32 export directory")
    sp.add_argument("--out", required=True)
    sp.add_argument("--calib", required=True, help="manifest of TRAINING utterances for calibration")
    sp.add_argument("--num_calib", type=int, default=64)
    sp.add_argument("--batch_size", type=int, default=8)
    sp.add_argument("--functions", default="encoder", help="programs to quantize: encoder and/or decoder, comma-separated")
    sp.add_argument("--fp32_layers", default="auto",
                    help="edge layers kept in FP32: first_conv and/or output_layer (comma-separated), none, or "
                         "auto (both for the Conformer; first_conv only for DeepSpeech2, whose output layer is "
                         "one of its few GEMMs with an INT8 kernel)")
    sp.add_argument("--force", action="store_true")

    sp = add("import-paddlespeech", cmd_import_paddlespeech,
             "turn a PaddleSpeech U2 (asr1) or DeepSpeech2 (asr0) experiment/released model folder into exp_dir")
    sp.add_argument("folder", help="PaddleSpeech folder: model.yaml or conf/*.yaml, *.pdparams, vocab.txt, mean_std.json")
    sp.add_argument("--exp_dir", required=True, help="experiment directory to write, e.g. exp/paddlespeech_conformer")
    sp.add_argument("--config", default="", help="the model config, when the folder has several")
    sp.add_argument("--checkpoint", default="", help="the .pdparams file, when the folder has several")

    sp = add("transcribe", cmd_transcribe, "transcribe audio files, folders or wav.scp lists with an exported model")
    sp.add_argument("--model", required=True, help="exported model directory (FP32 or INT8), e.g. exp/<name>/export/int8")
    sp.add_argument("--method", default="auto",
                    choices=["auto", "ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"],
                    help="auto: attention_rescoring for U2, ctc_prefix_beam_search for CTC-only models")
    sp.add_argument("--chunk_size", type=int, default=-1, help=">0: streaming, encoder frames per chunk (streaming models)")
    sp.add_argument("--beam_size", type=int, default=10)
    sp.add_argument("--batch_size", type=int, default=8, help="segments decoded together")
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--format", default="text", choices=["text", "json"],
                    help="text: 'key transcript' lines; json: one object per recording with segment and token times")
    sp.add_argument("--segment_over", type=float, default=30.0,
                    help="recordings longer than this many seconds are cut at silences by a VAD (0: all)")
    sp.add_argument("--max_segment", type=float, default=20.0, help="longest segment in seconds")
    sp.add_argument("--vad_aggressiveness", type=int, default=2, choices=[0, 1, 2, 3])
    sp.add_argument("--progress", default="auto", choices=["auto", "on", "off"],
                    help="progress bar on stderr (auto: when stderr is a terminal)")
    sp.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3), folders, or Kaldi wav.scp files")

    sp = add("results", cmd_results, "write the recipe's RESULTS.md from an experiment's results")
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--results_md", default="RESULTS.md")

    sp = add("make-long-recording", cmd_make_long_recording,
             "join test utterances with silences into one long recording (checks long-form transcription)")
    sp.add_argument("--data", required=True, help="a data.list manifest, e.g. data/test/data.list")
    sp.add_argument("--out", required=True, help="the .wav to write; <stem>.parts.json and <stem>.text go beside it")
    sp.add_argument("--seconds", type=float, default=60.0)
    sp.add_argument("--sample_rate", type=int, default=16000)
    sp.add_argument("--seed", type=int, default=0)

    sp = add("long-recording-report", cmd_long_recording_report,
             "compare a long recording's JSON transcript with the utterances it was made of")
    sp.add_argument("--parts", required=True, help="<stem>.parts.json written by make-long-recording")
    sp.add_argument("--transcript", required=True, help="the output of transcribe --format json for that recording")

    sp = add("build-lm", cmd_build_lm,
             "character n-gram LM (modified Kneser-Ney, ARPA) from training transcripts, for LM beam search")
    sp.add_argument("--text", required=True, help="training transcripts: data.list manifest, Kaldi text, or plain lines")
    sp.add_argument("--out", required=True, help="ARPA file to write (.gz compresses); <stem>.txt and <stem>.json go beside it")
    sp.add_argument("--order", type=int, default=5)
    sp.add_argument("--format", default="auto", choices=["auto", "manifest", "kaldi", "plain"],
                    help="auto: *.list/*.jsonl manifest, 'text' Kaldi table, else plain lines")
    sp.add_argument("--units", default="", help="units file: every unit becomes an LM word (none is scored as <unk>)")
    sp.add_argument("--dev", default="", help="held-out transcripts (same formats): report perplexity vs a unigram")
    sp.add_argument("--keep_spaces", action="store_true", help="word breaks become the <space> unit instead of vanishing")
    sp.add_argument("--force", action="store_true")

    sp = add("devices", cmd_devices, "what this Paddle can do on GPUs: CUDA, cuDNN, NCCL, AMP, TensorRT")
    sp.add_argument("--require", default="", type=lambda v: [x for x in v.split(",") if x],
                    help="comma-separated features that must be available (exit status 3 otherwise)")

    sp = add("dashboard", cmd_dashboard, "serve VisualDL on the training logs under a folder (default 127.0.0.1:8040)")
    sp.add_argument("--logdir", default="exp", help="folder holding the runs' visualdl/ logs, e.g. exp")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to bind; 127.0.0.1 keeps the dashboard on this machine (0.0.0.0 opens it to the network)")
    sp.add_argument("--port", type=int, default=8040)

    sp = add("score", cmd_score, "compute-wer compatible scoring: paddle-asr score --ref REF --hyp HYP [--char 1] [--v 1]")
    sp.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:  # compute-wer's own options (--ref, --char=1, ...) go to the scorer untouched
        return score_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AsrError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except TrainingStopped as e:
        print(f"stage 1: {e}", file=sys.stderr, flush=True)
        return 143  # 128 + SIGTERM: the stage did not finish, so the stages after it must not run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
