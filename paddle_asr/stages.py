"""The recipe stages behind the `paddle-asr` subcommands, one function each.

A stage fingerprints its inputs and settings, reuses a complete output or rebuilds it whole
(`artifacts.reuse_or_clear`, which says which), and calls the engine. Stages run with the recipe
directory as the working directory; relative paths in configs are relative to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from paddle_asr.artifacts import done_marker, fingerprint, mark_complete, reuse_or_clear
from paddle_asr.errors import AsrError

Log = Callable[[str], None]


def exp_config(exp_dir: Path):
    """The config stage 1 saved in `exp_dir` (later stages read it, never the recipe's)."""
    from paddle_asr.config import load_config

    path = Path(exp_dir) / "train.yaml"
    if not path.is_file():
        raise AsrError(f"{path} does not exist; run stage 1 (training) first - later stages read the config it saved")
    return load_config(path)


def checkpoint_path(exp_dir: Path, config, checkpoint: str | Path | None = None) -> Path:
    """`checkpoint` when given, else the averaged checkpoint stage 2 writes."""
    if checkpoint:
        return Path(checkpoint)
    from paddle_asr.train.checkpoint import averaged_name

    return Path(exp_dir) / "checkpoints" / averaged_name(config.training.average_num, config.training.average_mode)


def load_dygraph(exp_dir: Path, checkpoint: Path):
    """(config, model in eval mode) of an experiment, with `checkpoint`'s weights."""
    from paddle_asr.cpu_settings import configure_cpu
    from paddle_asr.models.registry import build_model, load_weights

    config = exp_config(exp_dir)
    configure_cpu(config.training.num_threads)
    model = build_model(config)
    load_weights(model, checkpoint)
    model.eval()
    return config, model


def load_decode(decode_config: Path, batch_size: int = 0, context_list: str = "", context_score: float | None = None):
    """The decode config, with the command line's `batch_size` (when > 0), `context_list` (when
    given) and `context_score` (when not None) in place of its own."""
    from paddle_asr.config import check_config, load_decode_config

    conf = load_decode_config(Path(decode_config))
    if batch_size:
        conf.batch_size = batch_size
    if context_list:
        conf.context_list = str(context_list)
    if context_score is not None:
        conf.context_score = context_score
    check_config(conf, f"{decode_config} with the command line's options")
    return conf


def prepare_stage(corpus: str, corpus_dir: Path, out_dir: Path, config_path: Path, *,
                  sets: dict[str, list[str]] | None = None, train_set: str = "", nj: int = 2, shards: int = 0,
                  force: bool = False, log: Log = print) -> None:
    """Stage 0: manifests and units in `out_dir`, the training set's CMVN, and optionally tar shards."""
    from paddle_asr.config import load_config
    from paddle_asr.data.prepare import prepare_cmvn, prepare_data, train_set_name

    if shards < 0:
        raise AsrError(f"--shards must be 0 (no shards) or the utterances per shard, got {shards}")
    config = load_config(Path(config_path))
    out_dir = Path(out_dir)
    trained_on = train_set_name(config.data)
    if train_set and train_set != trained_on:
        raise AsrError(f"--train_set {train_set}, but {config_path} trains on data.train: {config.data.train}; "
                       f"set data.train: data/{train_set}/data.list (and data.cmvn beside it) in the config")
    prepare_data(corpus, Path(corpus_dir), out_dir, config.features, config.data, sets=sets, nj=nj, force=force,
                 log=log)
    # The config names the file as training reads it (data/<train set>/<name>, from the recipe);
    # stage 0 writes that name under out_dir, wherever it is.
    prepare_cmvn(out_dir, config.features, out_dir / trained_on / Path(config.data.cmvn).name, nj=nj, force=force,
                 log=log, train_set=trained_on)
    if shards:
        from paddle_asr.data.manifest import read_manifest
        from paddle_asr.data.shards import write_shards

        listing = write_shards(read_manifest(out_dir / trained_on / "data.list"), out_dir / trained_on / "shards",
                               shards, force=force, log=log)
        log(f"stage 0: training shard list -> {listing}")


def train_stage(config_path: Path, exp_dir: Path, *, nproc: int = 1, gpus: str = "", ips: str = "",
                init_from: str = "", force: bool = False, log: Log = print) -> None:
    """Stage 1: train in this process, or start data-parallel workers (CPU processes, GPUs, machines).
    `init_from`, when given, replaces the config's training.init_from."""
    import dataclasses
    import subprocess

    from paddle_asr.config import load_config
    from paddle_asr.train.distributed import launch_command
    from paddle_asr.train.trainer import prepare_run, run_training

    exp_dir = Path(exp_dir)
    if gpus:  # before any process starts: a CPU build of Paddle cannot train on GPUs
        from paddle_asr.devices import require

        require("cuda", f"--gpus {gpus} (training on GPUs; --nproc N trains with CPU processes)")
        if "," in gpus or ips:
            require("nccl", "data-parallel training on several GPUs")
    config = load_config(Path(config_path))
    if init_from:
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, init_from=init_from))
    if prepare_run(config, Path.cwd(), exp_dir, force=force, log=log) is None:
        return
    if nproc <= 1 and not gpus and not ips:
        run_training(Path.cwd(), exp_dir, log=log)
        return
    # Each worker runs `paddle-asr train ... --worker`, which goes straight to `run_training`.
    train_args = ["train", "--config", str(config_path), "--exp_dir", str(exp_dir)] + (["--gpus", gpus] if gpus else [])
    cmd = launch_command(train_args, nproc=nproc, gpus=gpus, ips=ips, log_dir=exp_dir / "launch")
    log(f"stage 1: data-parallel training: {' '.join(cmd)}")
    if subprocess.run(cmd).returncode != 0:
        raise AsrError(f"data-parallel training failed; each process's output is in {exp_dir / 'launch'}/workerlog.N")


def average_stage(exp_dir: Path, *, num: int = 0, mode: str = "", force: bool = False, log: Log = print) -> Path:
    """Stage 2: average checkpoints (defaults: the config's training.average_num and average_mode)."""
    from paddle_asr.train.checkpoint import average_checkpoints, averaged_name, list_checkpoints

    config = exp_config(exp_dir)
    num = num or config.training.average_num
    mode = mode or config.training.average_mode
    ckpt_dir = Path(exp_dir) / "checkpoints"
    out = ckpt_dir / averaged_name(num, mode)
    fp = fingerprint("average-v3", num, mode, [Path(r["path"]) for r in list_checkpoints(ckpt_dir)])
    if reuse_or_clear(out, fp, "stage 2 (average)", force, log, noun="averaged checkpoint"):
        return out
    provenance = average_checkpoints(ckpt_dir, num, out, mode=mode, log=log)
    mark_complete(out, fp, **provenance)
    return out


TEST_SET = "{test_set}"  # in an output prefix: each test set's name


def test_runs(data: list[Path], decode_configs: list[Path], out_prefix: str) -> list[tuple[Path, Path, Path]]:
    """(manifest, decode config, output prefix) of every test set x decode config, sets outermost:
    one process decodes them all with one model, paying its start-up once. `{test_set}` in
    `out_prefix` stands for each set's name (its manifest's folder: data/test/data.list -> test)."""
    if len(data) > 1 and TEST_SET not in out_prefix:
        raise AsrError(f"--out_prefix {out_prefix} would hold the results of all {len(data)} test sets: put "
                       f"{TEST_SET} in it where each set's name goes (e.g. exp/x/{TEST_SET})")
    names = [Path(d).parent.name for d in data]
    if TEST_SET in out_prefix and len(set(names)) < len(names):
        raise AsrError(f"test sets {', '.join(map(str, data))}: two share a name, and so their results' "
                       "directories; give each set a folder of its own")
    return [(Path(d), Path(c), Path(out_prefix.replace(TEST_SET, name)))
            for d, name in zip(data, names) for c in decode_configs]


def test_stage(exp_dir: Path, data: list[Path], decode_configs: list[Path], *, checkpoint: str = "",
               out_prefix: str = "", batch_size: int = 0, context_list: str = "", context_score: float | None = None,
               force: bool = False, log: Log = print) -> list[Path]:
    """Stage 3: decode test sets with the dynamic-graph model, every method of each decode config;
    returns each run's result prefix (`test_runs`' order)."""
    import functools

    from paddle_asr.data.tokenizer import load_tokenizer
    from paddle_asr.evaluate import KeptFeatures, evaluate_stage

    exp_dir = Path(exp_dir)
    config = exp_config(exp_dir)
    ckpt = checkpoint_path(exp_dir, config, checkpoint)

    @functools.cache
    def backend():  # built at the first run that decodes, then shared
        from paddle_asr.families import dygraph_backend

        return dygraph_backend(load_dygraph(exp_dir, ckpt)[1])

    tokenizer = load_tokenizer(Path(config.data.vocab), config.data.units)
    out_prefix = out_prefix or str(exp_dir / ("test" if len(data) == 1 else TEST_SET))
    prefixes, kept = [], KeptFeatures()
    for manifest, decode_config, prefix in test_runs(data, decode_configs, out_prefix):
        extra = {"model": "dygraph", "checkpoint": str(ckpt), "decode_config": str(decode_config)}
        conf = load_decode(decode_config, batch_size, context_list, context_score)
        prefixes.append(evaluate_stage("stage 3 (dynamic graph)", backend, conf, manifest, config.features,
                                       tokenizer, [exp_dir / "train.yaml", ckpt, manifest], extra, prefix,
                                       force=force, kept=kept, log=log))
    return prefixes


def export_stage(exp_dir: Path, out: Path, *, checkpoint: str = "", onnx_out: Path | None = None,
                 force: bool = False, log: Log = print) -> None:
    """Stage 4: export the runtime programs with CMVN inside, each checked against the dynamic graph;
    then, unless `onnx_out` is None, their ONNX export (`export.onnx`) into `onnx_out`."""
    from paddle_asr.export.bundle import write_bundle_files
    from paddle_asr.export.export import export_model

    exp_dir, out = Path(exp_dir), Path(out)
    ckpt = checkpoint_path(exp_dir, exp_config(exp_dir), checkpoint)
    fp = fingerprint("export-v3", exp_dir / "train.yaml", ckpt)
    loaded = {}
    if not reuse_or_clear(out, fp, "stage 4 (export)", force, log, noun="export"):
        config, loaded["model"] = load_dygraph(exp_dir, ckpt)
        # export_model writes atomically and checks every program against the dynamic graph itself.
        diffs = export_model(loaded["model"], config.input_dim, out)
        write_bundle_files(out, config, Path(config.data.vocab), loaded["model"], checkpoint=str(ckpt),
                           functions=sorted(diffs))
        mark_complete(out, fp)
        log(f"stage 4 (export): {', '.join(sorted(diffs))} (CMVN inside; max |diff| vs dynamic graph "
            f"{max(diffs.values()):.1e}) -> {out}")
    if onnx_out is not None:
        onnx_export_stage(exp_dir, out, Path(onnx_out), ckpt, loaded.get("model"), force=force, log=log)


def onnx_export_stage(exp_dir: Path, bundle: Path, out: Path, ckpt: Path, model=None, *, force: bool = False,
                      log: Log = print) -> None:
    """Stage 4's ONNX export of the FP32 bundle; for U2 models the dynamic graph `model` (loaded
    when None) gives sherpa-onnx's files."""
    import json

    from paddle_asr.export.onnx import export_onnx

    meta = json.loads((bundle / "meta.json").read_text(encoding="utf-8"))
    fp = fingerprint("export-onnx-v2", done_marker(bundle))
    if reuse_or_clear(out, fp, "stage 4 (ONNX)", force, log, noun="ONNX export"):
        return
    if model is None and meta.get("model", "u2") == "u2":  # sherpa-onnx's files are traced from it
        model = load_dygraph(exp_dir, ckpt)[1]
    files = export_onnx(bundle, out, model)
    mark_complete(out, fp)
    log(f"stage 4 (ONNX): {', '.join(f for f in files if f.endswith('.onnx'))} (paddle2onnx) -> {out}")


def test_export_stage(bundle: Path, data: list[Path], decode_configs: list[Path], *, out_prefix: str,
                      compare_prefix: str = "", batch_size: int = 0, threads: int = 2, gpu=None,
                      runtime: str = "paddle", context_list: str = "", context_score: float | None = None,
                      force: bool = False, log: Log = print) -> int:
    """Stages 5/6: decode test sets with an exported bundle (Paddle Inference, or ONNX Runtime on its
    ONNX export with `runtime="onnx"`), every decode config (`test_runs`); with `compare_prefix`
    (`{test_set}` as in `out_prefix`), 1 unless every hypothesis equals stage 3's."""
    import functools

    from paddle_asr.evaluate import KeptFeatures, compare_with, evaluate_stage, mode_prefix
    from paddle_asr.export.bundle import read_bundle

    bundle = Path(bundle)
    meta, features, tokenizer = read_bundle(bundle)
    label = _export_label(bundle, meta, gpu, runtime)
    runs = test_runs(data, decode_configs, str(out_prefix))

    @functools.cache
    def backend():  # built at the first run that decodes, then shared
        from paddle_asr.export.runtime import load_backend

        return load_backend(bundle, meta, num_threads=threads, gpu=gpu, runtime=runtime)

    onnx = []
    if runtime == "onnx":
        from paddle_asr.export.onnx_backend import onnx_export_of

        onnx.append(onnx_export_of(bundle, meta) / "encoder.onnx")
    model = {"model": _export_model_name(meta, gpu, runtime), "model_bytes": _model_bytes(bundle, meta, runtime),
             "threads": threads}
    status, kept = 0, KeptFeatures()
    for manifest, decode_config, prefix in runs:
        conf = load_decode(decode_config, batch_size, context_list, context_score)
        extra = {**model, "decode_config": str(decode_config)}
        inputs = [done_marker(bundle), manifest, *onnx]
        prefix = evaluate_stage(label, backend, conf, manifest, features, tokenizer, inputs, extra, prefix,
                                force=force, kept=kept, log=log)
        if compare_prefix:
            theirs = Path(compare_prefix.replace(TEST_SET, manifest.parent.name))
            status |= compare_with(prefix, theirs.parent / mode_prefix(theirs.name, conf), conf.methods, log)
    return status


def _export_label(bundle: Path, meta: dict, gpu, runtime: str) -> str:
    """`stage 5 (exported FP32[, engine])` or `stage 6 (exported INT8[, engine])`; refuses a TensorRT
    precision that does not fit the bundle."""
    int8 = meta.get("precision") == "int8"
    trt = gpu.tensorrt if gpu else ""
    if trt and trt != ("int8" if int8 else "fp16"):
        raise AsrError(f"--trt {trt} does not fit {bundle}: TensorRT FP16 takes the FP32 export (stage 4), "
                       "TensorRT INT8 takes the PaddleSlim INT8 bundle (stage 6), whose scales it reads")
    engine = f", TensorRT {trt.upper()} on GPU {gpu.device_id}" if trt else (", GPU" if gpu else "")
    engine += ", ONNX Runtime" if runtime == "onnx" else ""
    return f"stage {'6' if int8 else '5'} (exported {'INT8' if int8 else 'FP32'}{engine})"


def _export_model_name(meta: dict, gpu, runtime: str) -> str:
    """result.json's `model` of an exported bundle's run: runtime, precision, engine."""
    trt = gpu.tensorrt if gpu else ""
    kind = "onnxruntime" if runtime == "onnx" else "inference"
    return f"{kind}-{meta.get('precision')}" + (f"-tensorrt-{trt}" if trt else "-gpu" if gpu else "")


def onnx_int8_stage(fp32_bundle: Path, int8_bundle: Path, functions: str, calib: Path | str, *, num_calib: int = 64,
                    batch_size: int = 8, force: bool = False, log: Log = print) -> None:
    """Stage 6's ONNX INT8 export (export/onnx_int8 beside the INT8 bundle) from stage 4's ONNX
    export (export/onnx beside the FP32 one), when there is one, calibrated on the utterances the
    Paddle INT8 bundle was."""
    from paddle_asr.export.calibrate import onnx_calibration
    from paddle_asr.export.onnx_backend import is_onnx_export
    from paddle_asr.export.onnx_int8 import quantize_onnx_export

    src, out = Path(fp32_bundle).parent / "onnx", Path(int8_bundle).parent / "onnx_int8"
    if not is_onnx_export(src):
        log(f"stage 6 (ONNX INT8): skipped, no ONNX export in {src} (stage 4 writes it)")
        return
    names = [f for f in functions.split(",") if f]
    fp = fingerprint("onnx-int8-v2", src / "encoder.onnx", names, Path(calib), num_calib, batch_size)
    if reuse_or_clear(out, fp, "stage 6 (ONNX INT8)", force, log, noun="ONNX INT8 export"):
        return
    calibration = onnx_calibration(src, Path(fp32_bundle), calib, num_calib, batch_size)
    files = quantize_onnx_export(src, out, names, calibration)
    mark_complete(out, fp)
    size = sum(p.stat().st_size for p in out.glob("*.onnx")) / 1e6
    log(f"stage 6 (ONNX INT8): {', '.join(files)} with INT8 MatMul weights (ONNX Runtime dynamic quantization) "
        f"and INT8 subsampling convolutions in {', '.join(f for f in files if f in calibration)} (static, "
        f"calibrated), {size:.2f} MB in all -> {out}")


def _model_bytes(bundle: Path, meta: dict, runtime: str) -> int:
    """What a deployment ships: the Paddle programs, or the ONNX files of the export beside them."""
    from paddle_asr.export.bundle import bundle_bytes

    if runtime != "onnx":
        return bundle_bytes(bundle)
    from paddle_asr.export.onnx_backend import onnx_export_of

    return sum(p.stat().st_size for p in onnx_export_of(bundle, meta).glob("*.onnx"))


def build_lm_stage(text: Path, out: Path, *, order: int = 5, fmt: str = "auto", keep_spaces: bool = False,
                   units: str = "", dev: str = "", force: bool = False, log: Log = print) -> None:
    """Stage 0 (LM decoding): an n-gram LM from the training transcripts."""
    from paddle_asr.lm.build import build_lm

    out = Path(out)
    inputs = [Path(p) for p in (text, units, dev) if p]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise AsrError(f"build-lm: {', '.join(missing)} not found; run stage 0 (data preparation) first")
    fp = fingerprint("build-lm-v2", order, fmt, keep_spaces, *inputs)
    if reuse_or_clear(out, fp, "build-lm", force, log, noun="LM"):
        return
    build_lm(Path(text), out, order=order, fmt=fmt, keep_spaces=keep_spaces, units=Path(units) if units else None,
             dev_text=Path(dev) if dev else None, log=log)
    mark_complete(out, fp)
