"""The `paddle-asr` command: one subcommand per recipe stage, plus transcribe and score.

This module only parses arguments and calls the engine (`paddle_asr.stages` holds the stages).
Stages run with the recipe directory as the working directory; relative paths in configs are
relative to it. A user-fixable problem ends with `error: <message>` and exit status 1, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from paddle_asr.config import DecodeConfig
from paddle_asr.errors import AsrError, TrainingStopped

# add(name, func, help) -> the subcommand's parser; see build_parser.
AddCommand = Callable[[str, Callable, str], argparse.ArgumentParser]


CONTEXT_LIST_HELP = ("hotwords: a UTF-8 file of phrases, one a line, that CTC prefix beam search and attention "
                     "rescoring favour (docs/decoding.md)")


def _context_options(sp: argparse.ArgumentParser, score_default: float | None) -> None:
    """--context_list and --context_score; `score_default` None: the decode config's context_score."""
    sp.add_argument("--context_list", default="", help=CONTEXT_LIST_HELP)
    sp.add_argument("--context_score", type=float, default=score_default,
                    help="hotwords: bonus per matched unit of a phrase (log-probability units; default: "
                         + ("the decode config's context_score)" if score_default is None else f"{score_default})"))


RUNTIME_HELP = ("paddle: Paddle Inference; onnx: ONNX Runtime on the ONNX export (the directory itself, or "
                "export/onnx beside an export/fp32 bundle); auto: what the directory holds, except an FP32 bundle "
                "with its ONNX export beside it, which ONNX Runtime runs (same transcripts, faster)")

def log(msg: str) -> None:
    print(msg, flush=True)


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
    from paddle_asr.stages import prepare_stage

    prepare_stage(args.corpus, Path(args.data_dir), Path(args.out_dir), Path(args.config), sets=_parse_sets(args.sets),
                  train_set=args.train_set, nj=args.nj, shards=args.shards, force=args.force, log=log)
    return 0


def cmd_train(args) -> int:
    if args.worker:  # started by paddle.distributed.launch: the parent prepared exp_dir
        from paddle_asr.train.trainer import run_training

        run_training(Path.cwd(), Path(args.exp_dir), use_gpu=bool(args.gpus), log=log)
        return 0
    from paddle_asr.stages import train_stage

    train_stage(Path(args.config), Path(args.exp_dir), nproc=args.nproc, gpus=args.gpus, ips=args.ips,
                init_from=args.init_from, force=args.force, log=log)
    return 0


def cmd_average(args) -> int:
    from paddle_asr.stages import average_stage

    average_stage(Path(args.exp_dir), num=args.num, mode=args.mode, force=args.force, log=log)
    return 0


def cmd_test(args) -> int:
    from paddle_asr.stages import test_stage

    test_stage(Path(args.exp_dir), [Path(d) for d in args.data], [Path(c) for c in args.decode_config],
               checkpoint=args.checkpoint, out_prefix=args.out_prefix, batch_size=args.batch_size,
               context_list=args.context_list, context_score=args.context_score, force=args.force, log=log)
    return 0


def cmd_export(args) -> int:
    from paddle_asr.stages import export_stage

    onnx_out = None if args.onnx_out == "none" else Path(args.onnx_out or Path(args.out).parent / "onnx")
    export_stage(Path(args.exp_dir), Path(args.out), checkpoint=args.checkpoint, onnx_out=onnx_out, force=args.force,
                 log=log)
    return 0


def cmd_test_export(args) -> int:
    from paddle_asr.stages import test_export_stage

    return test_export_stage(Path(args.bundle), [Path(d) for d in args.data], [Path(c) for c in args.decode_config],
                             out_prefix=args.out_prefix, compare_prefix=args.compare_prefix,
                             batch_size=args.batch_size, threads=args.threads, gpu=_gpu_inference(args),
                             runtime=args.runtime, context_list=args.context_list,
                             context_score=args.context_score, force=args.force, log=log)


def cmd_sherpa_check(args) -> int:
    from paddle_asr.export.sherpa_check import sherpa_check

    sherpa_check(Path(args.onnx), Path(args.data), chunk_size=args.chunk_size, num_left_chunks=args.num_left_chunks,
                 num_threads=args.threads, out=Path(args.out) if args.out else None,
                 log=lambda msg: log(f"sherpa-onnx on {args.onnx}: {msg}"))
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


def cmd_quantize(args) -> int:
    from paddle_asr.export.calibrate import quantize_bundle
    from paddle_asr.stages import onnx_int8_stage

    quantize_bundle(Path(args.bundle), Path(args.out), args.calib, num_calib=args.num_calib, batch_size=args.batch_size,
                    functions=args.functions, fp32_layers=args.fp32_layers, force=args.force, log=log)
    onnx_int8_stage(Path(args.bundle), Path(args.out), args.functions, args.calib, num_calib=args.num_calib,
                    batch_size=args.batch_size, force=args.force, log=log)
    return 0


def cmd_import_paddlespeech(args) -> int:
    from paddle_asr.import_paddlespeech import import_paddlespeech

    import_paddlespeech(Path(args.folder), Path(args.exp_dir), config_path=Path(args.config) if args.config else None,
                        checkpoint=Path(args.checkpoint) if args.checkpoint else None, log=log)
    return 0


def cmd_transcribe(args) -> int:
    from paddle_asr.data.vad import VadConfig
    from paddle_asr.transcribe import TranscribeOptions
    from paddle_asr.transcribe_command import transcribe_paths

    options = TranscribeOptions(
        method=args.method, chunk_size=args.chunk_size, num_left_chunks=args.num_left_chunks,
        beam_size=args.beam_size, batch_size=args.batch_size,
        segment_over=args.segment_over, num_threads=args.threads,
        vad=VadConfig(aggressiveness=args.vad_aggressiveness, max_segment=args.max_segment),
        runtime=args.runtime, context_list=args.context_list, context_score=args.context_score)
    return transcribe_paths(Path(args.bundle), args.audio, options, output_format=args.format,
                            show_progress={"auto": None, "on": True, "off": False}[args.progress])


def cmd_align(args) -> int:
    import dataclasses

    from paddle_asr.align import AlignOptions, align_paths

    vad = dataclasses.replace(AlignOptions.vad, aggressiveness=args.vad_aggressiveness)
    options = AlignOptions(window=args.window, overlap=args.overlap, num_threads=args.threads, runtime=args.runtime,
                           vad=vad)
    return align_paths(Path(args.model), Path(args.text), args.audio, options, output_format=args.format,
                       level=args.level, out=Path(args.out) if args.out else None)


def cmd_serve(args) -> int:
    from paddle_asr.serve.app import serve_from_args

    return serve_from_args(args)


def cmd_results(args) -> int:
    from paddle_asr.results import write_results

    write_results(Path(args.exp_dir), Path(args.results_md), log=log)
    return 0


def cmd_build_lm(args) -> int:
    from paddle_asr.stages import build_lm_stage

    build_lm_stage(Path(args.text), Path(args.out), order=args.order, fmt=args.format, keep_spaces=args.keep_spaces,
                   units=args.units, dev=args.dev, force=args.force, log=log)
    return 0


def cmd_make_demo_corpus(args) -> int:
    from paddle_asr.data.corpora.demo import generate_demo_corpus, log_summary

    log_summary(generate_demo_corpus(Path(args.out_dir), force=args.force, log=log), log)
    return 0


def cmd_make_librispeech_demo(args) -> int:
    from paddle_asr.data.corpora.english_demo import generate_english_demo, log_summary

    log_summary(generate_english_demo(Path(args.out_dir), force=args.force, log=log), log)
    return 0


def cmd_make_long_recording(args) -> int:
    from paddle_asr.data.long_recording import write_long_recording
    from paddle_asr.data.manifest import read_manifest

    out = Path(args.out)
    parts = write_long_recording(read_manifest(Path(args.data)), out, args.seconds, args.sample_rate, seed=args.seed)
    log(f"{out}: {len(parts)} utterances of {args.data} with silences between, {parts[-1]['end']:.1f} s of "
        f"speech span; parts in {out.with_suffix('.parts.json')}, reference in {out.with_suffix('.text')}")
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
        f"{r['report'].metric} of the segments against their utterances {o.rate:.2f} % "
        f"(N={o.n} S={o.s} D={o.d} I={o.i})")
    for key, ref, hyp in r["pairs"]:
        log(f"  {key}  ref {ref}\n  {' ' * len(key)}  hyp {hyp}")
    return 0  # a report: a real corpus may hold pauses that split an utterance


def cmd_long_recording_align_report(args) -> int:
    from paddle_asr.data.audio import read_audio
    from paddle_asr.data.long_recording import compare_alignment_with_parts, read_alignment

    parts = json.loads(Path(args.parts).read_text(encoding="utf-8"))
    alignment = read_alignment(Path(args.alignment))
    waveform, rate = read_audio(Path(alignment["path"]))
    r = compare_alignment_with_parts(parts, alignment, waveform, rate, args.tolerance_frames)
    log(f"alignment of the concatenated reference ({len(alignment['words'])} words, {alignment['duration']:.1f} s): "
        f"{r['within']} of {len(r['rows'])} utterances ({100 * r['fraction']:.1f} %) have their first word's start "
        f"and last word's end within {args.tolerance_frames} encoder frames ({r['tolerance']:.2f} s) of where "
        "their speech starts and ends")
    for key, start, first, end, last, within in r["rows"]:
        log(f"  {key}  speech {start:7.2f} - {end:7.2f} s, aligned {first:7.2f} - {last:7.2f} s "
            f"({first - start:+.2f} / {last - end:+.2f}){'' if within else '  OUTSIDE'}")
    return 0  # a report: stage 7 prints it


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


# ------------------------------------------------------------------------------------------ parser
def _corpus_commands(add: AddCommand) -> None:
    """Stage -1 (get or synthesise a corpus) and stage 0 (prepare it). --data_dir is always the corpus."""
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
    sp.add_argument("--data_dir", required=True, help="where the corpus is")
    sp.add_argument("--out_dir", default="data", help="the folder to write: one folder per data set, lang_char/")
    sp.add_argument("--config", required=True, help="the training config (its features and data sections are used)")
    sp.add_argument("--sets", default="", help='data sets as corpus subsets, e.g. "train_960=train-clean-100,'
                    'train-clean-360,train-other-500 dev=dev-clean,dev-other test_clean=test-clean" (LibriSpeech)')
    sp.add_argument("--train_set", default="", help="check that the config trains on data/<train_set>")
    sp.add_argument("--nj", type=int, default=2)
    sp.add_argument("--force", action="store_true")
    sp.add_argument("--shards", type=int, default=0, metavar="N",
                    help="also write the training set as tar shards of N utterances in out_dir/train/shards (0: off)")


def _training_commands(add: AddCommand) -> None:
    """Stages 1 and 2, and turning a PaddleSpeech experiment into one of ours."""
    sp = add("train", cmd_train,
             "stage 1: train (resumes an unfinished run); writes exp_dir/train.yaml and checkpoints")
    sp.add_argument("--config", required=True)
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--force", action="store_true", help="start over even when a run can be reused or resumed")
    sp.add_argument("--nproc", type=int, default=1, help="data-parallel CPU processes (paddle.distributed.launch)")
    sp.add_argument("--gpus", default="", help="GPU ids for data-parallel training, one process each, e.g. 0,1,2,3")
    sp.add_argument("--ips", default="", help="several machines: their IPs (run the same command on each)")
    sp.add_argument("--init_from", default="",
                    help="fine-tune: start from this .pdparams checkpoint's weights (default: training.init_from)")
    sp.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    sp = add("average", cmd_average, "stage 2: average the N checkpoints with the lowest dev loss")
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--num", type=int, default=0, help="default: training.average_num of the config")
    sp.add_argument("--mode", default="", choices=["", "best", "last"],
                    help="best: lowest dev loss; last: latest epochs (default: training.average_mode)")
    sp.add_argument("--force", action="store_true")

    sp = add("import-paddlespeech", cmd_import_paddlespeech,
             "turn a PaddleSpeech U2 (asr1) or DeepSpeech2 (asr0) experiment/released model folder into exp_dir")
    sp.add_argument("folder",
                    help="PaddleSpeech folder: model.yaml or conf/*.yaml, *.pdparams, vocab.txt, mean_std.json")
    sp.add_argument("--exp_dir", required=True, help="experiment directory to write, e.g. exp/paddlespeech_conformer")
    sp.add_argument("--config", default="", help="the model config, when the folder has several")
    sp.add_argument("--checkpoint", default="", help="the .pdparams file, when the folder has several")


def _test_and_export_commands(add: AddCommand) -> None:
    """Stages 3 (test), 4 (export) and 5/6 (test an exported bundle)."""
    sp = add("test", cmd_test,
             "stage 3: decode test sets with the dynamic-graph model, every method of each decode config")
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--checkpoint", default="", help="default: exp_dir/checkpoints/avg_<average_num>.pdparams")
    sp.add_argument("--data", required=True, nargs="+", help="manifests (data.list) of the test sets")
    sp.add_argument("--decode_config", required=True, nargs="+",
                    help="conf/decode.yaml (full) and/or conf/chunk_decode.yaml (streaming)")
    sp.add_argument("--out_prefix", default="",
                    help="results go to <prefix>[_chunkN]_<method>/, where {test_set} stands for each set's name "
                         "(default exp_dir/test for one set, exp_dir/{test_set} for several)")
    sp.add_argument("--batch_size", type=int, default=0, help="override the decode config's batch_size")
    _context_options(sp, None)
    sp.add_argument("--force", action="store_true")

    sp = add("export", cmd_export,
             "stage 4: export the runtime programs (encoder, encoder_chunk, ctc_activation, decoder)")
    sp.add_argument("--exp_dir", required=True)
    sp.add_argument("--checkpoint", default="", help="default: exp_dir/checkpoints/avg_<average_num>.pdparams")
    sp.add_argument("--out", required=True, help="the bundle directory to write, e.g. exp/<name>/export/fp32")
    sp.add_argument("--onnx_out", default="",
                    help="where the ONNX export goes (default: onnx/ beside --out; none: no ONNX)")
    sp.add_argument("--force", action="store_true")

    sp = add("test-export", cmd_test_export,
             "stages 5/6: decode test sets with an exported model (Paddle Inference or ONNX Runtime)")
    sp.add_argument("--bundle", required=True, help="exported bundle directory (FP32 or INT8)")
    sp.add_argument("--data", required=True, nargs="+", help="manifests (data.list) of the test sets")
    sp.add_argument("--decode_config", required=True, nargs="+", help="one or more decode configs")
    sp.add_argument("--out_prefix", required=True,
                    help="results go to <prefix>[_chunkN]_<method>/; {test_set} stands for each set's name")
    sp.add_argument("--compare_prefix", default="",
                    help="stage-3 prefix whose hypotheses must be reproduced exactly ({test_set} as in --out_prefix)")
    sp.add_argument("--batch_size", type=int, default=0)
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--device", default="cpu", help="cpu (oneDNN), gpu or gpu:N (Paddle Inference on CUDA)")
    sp.add_argument("--trt", default="", choices=["", "fp16", "int8"],
                    help="with --device gpu: TensorRT FP16 (FP32 export) or INT8 (the PaddleSlim INT8 bundle)")
    sp.add_argument("--runtime", default="paddle", choices=["paddle", "onnx"],
                    help="paddle: Paddle Inference on the bundle; onnx: ONNX Runtime on the ONNX export beside it "
                         "(export/onnx for fp32, export/onnx_int8 for int8)")
    _context_options(sp, None)
    sp.add_argument("--force", action="store_true")


def _sherpa_check_command(add: AddCommand) -> None:
    sp = add("sherpa-check", cmd_sherpa_check, "stage 5: a test set through sherpa-onnx on the ONNX export (its own "
             "fbank) beside our CTC greedy search on ONNX Runtime, offline and streaming; error rates side by side")
    sp.add_argument("--onnx", required=True, help="the ONNX export of a U2 model, e.g. exp/<name>/export/onnx")
    sp.add_argument("--data", required=True, help="manifest (data.list) of the test set")
    sp.add_argument("--chunk_size", type=int, default=16)
    sp.add_argument("--num_left_chunks", type=int, default=4)
    sp.add_argument("--out", default="", help="JSON file for the figures")
    sp.add_argument("--threads", type=int, default=1,
                    help="ONNX Runtime threads of our side (sherpa-onnx's recognizers run on one)")


def _quantize_command(add: AddCommand) -> None:
    """Stage 6."""
    sp = add("quantize", cmd_quantize, "stage 6: PaddleSlim post-training INT8 quantization of the encoder")
    sp.add_argument("--bundle", required=True, help="FP32 export directory")
    sp.add_argument("--out", required=True)
    sp.add_argument("--calib", required=True, help="manifest of TRAINING utterances for calibration")
    sp.add_argument("--num_calib", type=int, default=64)
    sp.add_argument("--batch_size", type=int, default=8)
    sp.add_argument("--functions", default="encoder",
                    help="programs to quantize: encoder and/or decoder, comma-separated")
    sp.add_argument("--fp32_layers", default="auto",
                    help="edge layers kept in FP32: first_conv and/or output_layer (comma-separated), none, or "
                         "auto (both for the Conformer; first_conv only for DeepSpeech2, whose output layer is "
                         "one of its few GEMMs with an INT8 kernel)")
    sp.add_argument("--force", action="store_true")


def _transcribe_command(add: AddCommand) -> None:
    """Stage 7 and everyday use: an exported bundle on any audio."""
    sp = add("transcribe", cmd_transcribe, "transcribe audio files, folders or wav.scp lists with an exported model")
    sp.add_argument("--bundle", required=True,
                    help="exported bundle directory (FP32 or INT8), e.g. exp/<name>/export/int8")
    sp.add_argument("--method", default="auto",
                    choices=["auto", "ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"],
                    help="auto: attention_rescoring for U2, ctc_prefix_beam_search for CTC-only models")
    sp.add_argument("--chunk_size", type=int, default=-1,
                    help=">0: streaming, encoder frames per chunk (streaming models)")
    sp.add_argument("--num_left_chunks", type=int, default=-1,
                    help="streaming: chunks of history the attention cache keeps (-1: all)")
    sp.add_argument("--beam_size", type=int, default=10)
    sp.add_argument("--batch_size", type=int, default=8, help="segments decoded together")
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--runtime", default="auto", choices=["auto", "paddle", "onnx"],
                    help=RUNTIME_HELP)
    sp.add_argument("--format", default="text", choices=["text", "json"],
                    help="text: 'key transcript' lines; json: one object per recording with segment and token times")
    sp.add_argument("--segment_over", type=float, default=30.0,
                    help="recordings longer than this many seconds are cut at silences by a VAD (0: all)")
    sp.add_argument("--max_segment", type=float, default=20.0, help="longest segment in seconds")
    sp.add_argument("--vad_aggressiveness", type=int, default=2, choices=[0, 1, 2, 3])
    sp.add_argument("--progress", default="auto", choices=["auto", "on", "off"],
                    help="progress bar on stderr (auto: when stderr is a terminal)")
    _context_options(sp, DecodeConfig.context_score)
    sp.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3), folders, or Kaldi wav.scp files")


def _align_command(add: AddCommand) -> None:
    """Forced alignment of given transcripts (docs/align.md)."""
    sp = add("align", cmd_align, "align given transcripts to audio (CTC Viterbi): word and token start/end times "
             "as CTM, Praat TextGrid or JSON")
    sp.add_argument("--model", "--bundle", dest="model", required=True,
                    help="exported bundle directory (FP32 or INT8), e.g. exp/<name>/export/fp32")
    sp.add_argument("--text", required=True, help="Kaldi text: '<id> <transcript>' lines, ids as the audio keys")
    sp.add_argument("--format", default="ctm", choices=["ctm", "textgrid", "json"],
                    help="ctm: '<id> 1 <start> <duration> <word> <confidence>' lines; textgrid: <out>/<id>.TextGrid "
                         "with words and tokens tiers; json: one object per recording with word and token times")
    sp.add_argument("--level", default="word", choices=["word", "token"], help="what the CTM lines are")
    sp.add_argument("--out", default="", help="ctm/json: the file to write (default: stdout); textgrid: the folder")
    sp.add_argument("--window", type=float, default=60.0,
                    help="seconds encoded in one pass; longer recordings are encoded in overlapping windows")
    sp.add_argument("--overlap", type=float, default=10.0, help="seconds consecutive windows share")
    sp.add_argument("--vad_aggressiveness", type=int, default=3, choices=[0, 1, 2, 3],
                    help="of the WebRTC voice-activity detector that ends a token before a pause")
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--runtime", default="auto", choices=["auto", "paddle", "onnx"], help=RUNTIME_HELP)
    sp.add_argument("audio", nargs="+", help="audio files, folders, or Kaldi wav.scp files (keys as in --text)")


def _serve_command(add: AddCommand) -> None:
    """The last stage: a streaming server speaking PaddleSpeech's protocols (docs/serving.md)."""
    sp = add("serve", cmd_serve, "serve an exported bundle with PaddleSpeech's streaming WebSocket and HTTP "
             "protocols, the chunks of many streams batched together")
    sp.add_argument("--model", required=True, help="exported bundle directory (FP32 or INT8)")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to bind; 127.0.0.1 keeps the server on this machine (0.0.0.0: the network)")
    sp.add_argument("--port", type=int, default=8090)
    sp.add_argument("--chunk_size", type=int, default=16, help="encoder frames per streaming chunk")
    sp.add_argument("--num_left_chunks", type=int, default=8,
                    help="chunks of history the attention cache keeps (-1: the whole segment); bounded, the "
                         "chunk shapes stop changing, and oneDNN reuses its kernels")
    sp.add_argument("--beam_size", type=int, default=10)
    sp.add_argument("--max_streams", type=int, default=32, help="open streams; more are refused")
    sp.add_argument("--max_latency", type=float, default=0.5,  # serve.admission.DEFAULT_MAX_LATENCY
                    help="seconds: new streams are refused while half of the recent partial results that waited "
                         "for the encoder took longer (the server is behind real time); 0: no limit")
    sp.add_argument("--max_batch", type=int, default=8,  # serve.worker.DEFAULT_MAX_BATCH
                    help="streams per batched encoder call (1: one at a time)")
    sp.add_argument("--threads", type=int, default=0,
                    help="CPU threads of each predictor (Paddle or ONNX Runtime); 0: half the cores, as the chunk "
                         "program and the attention decoder run at the same time")
    sp.add_argument("--runtime", default="auto", choices=["auto", "paddle", "onnx"],
                    help=RUNTIME_HELP)
    sp.add_argument("--endpoint_silence", type=float, default=1.0,
                    help="seconds of trailing blank that end a segment after text (0: off)")
    sp.add_argument("--endpoint_silence_no_text", type=float, default=5.0,
                    help="seconds of trailing blank that end a segment without text (0: off)")
    sp.add_argument("--max_segment", type=float, default=20.0,
                    help="seconds after which a segment ends (0: off); bounds a long stream's memory")
    sp.add_argument("--drain_seconds", type=float, default=30.0,
                    help="after SIGTERM, how long open streams may take to finish")
    _context_options(sp, DecodeConfig.context_score)


def _report_commands(add: AddCommand) -> None:
    """RESULTS.md, and the long-recording check of stage 7."""
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

    sp = add("long-recording-align-report", cmd_long_recording_align_report,
             "how the alignment of a long recording's reference finds the utterances it was made of")
    sp.add_argument("--parts", required=True, help="<stem>.parts.json written by make-long-recording")
    sp.add_argument("--alignment", required=True, help="the output of align --format json for <stem>.text")
    sp.add_argument("--tolerance_frames", type=int, default=2, help="encoder frames an end may be off")


def _lm_command(add: AddCommand) -> None:
    """Stage 0's language model, for LM beam search."""
    sp = add("build-lm", cmd_build_lm,
             "character n-gram LM (modified Kneser-Ney, ARPA) from training transcripts, for LM beam search")
    sp.add_argument("--text", required=True,
                    help="training transcripts: data.list manifest, Kaldi text, or plain lines")
    sp.add_argument("--out", required=True,
                    help="ARPA file to write (.gz compresses); <stem>.txt and <stem>.json go beside it")
    sp.add_argument("--order", type=int, default=5)
    sp.add_argument("--format", default="auto", choices=["auto", "manifest", "kaldi", "plain"],
                    help="auto: *.list/*.jsonl manifest, 'text' Kaldi table, else plain lines")
    sp.add_argument("--units", default="", help="units file: every unit becomes an LM word (none is scored as <unk>)")
    sp.add_argument("--dev", default="", help="held-out transcripts (same formats): report perplexity vs a unigram")
    sp.add_argument("--keep_spaces", action="store_true",
                    help="word breaks become the <space> unit instead of vanishing")
    sp.add_argument("--force", action="store_true")


def _tool_commands(add: AddCommand) -> None:
    """Devices, the training dashboard, and compute-wer scoring."""
    sp = add("devices", cmd_devices, "what this Paddle can do on GPUs: CUDA, cuDNN, NCCL, AMP, TensorRT")
    sp.add_argument("--require", default="", type=lambda v: [x for x in v.split(",") if x],
                    help="comma-separated features that must be available (exit status 3 otherwise)")

    sp = add("dashboard", cmd_dashboard, "serve VisualDL on the training logs under a folder (default 127.0.0.1:8040)")
    sp.add_argument("--logdir", default="exp", help="folder holding the runs' visualdl/ logs, e.g. exp")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to bind; 127.0.0.1 keeps the dashboard on this machine "
                         "(0.0.0.0 opens it to the network)")
    sp.add_argument("--port", type=int, default=8040)

    sp = add("score", cmd_score,
             "compute-wer compatible scoring: paddle-asr score --ref REF --hyp HYP [--char 1] [--v 1]")
    sp.add_argument("rest", nargs=argparse.REMAINDER)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paddle-asr", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(func=func)
        return sp

    for add_commands in (_corpus_commands, _training_commands, _test_and_export_commands, _sherpa_check_command,
                         _quantize_command, _transcribe_command, _serve_command, _report_commands, _lm_command,
                         _tool_commands, _align_command):
        add_commands(add)
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
