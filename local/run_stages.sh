#!/usr/bin/env bash
# The recipe stages, written once for every corpus. A recipe's run.sh calls this with its corpus
# defaults; the user's options come after and win. Runs inside the recipe directory: data/ and
# exp/ are written there.
#
#   stage -1  corpus     recipe's local/get_corpus.sh (demo: synthesise; real corpora: check/download)
#   stage  0  data       manifests of every set, units (characters or -> data/
#                        sentencepiece pieces), CMVN, unit n-gram LM
#   stage  1  train      U2 model (CTC + attention) from the config  -> exp/<name>/
#                        (resumes an unfinished run; --nproc N or --gpus 0,1 for data parallel)
#   stage  2  average    the N checkpoints with the lowest dev loss  -> exp/<name>/checkpoints/avg_N.pdparams
#   stage  3  test       dynamic graph, every method of each decode  -> exp/<name>/<test set>[_chunkN]_<method>/
#                        config (full, and streaming for chunk models)
#   stage  4  export     the runtime programs for Paddle Inference   -> exp/<name>/export/fp32/
#                        and their ONNX export (sherpa-onnx reads a U2 one) -> exp/<name>/export/onnx/
#   stage  5  test export same hypotheses as stage 3, every method   -> exp/<name>/<test set>_export_fp32[_chunkN]_<method>/
#                        (Paddle Inference, and ONNX Runtime on export/onnx -> ..._export_fp32_onnx_...);
#                        sherpa-onnx on export/onnx beside our greedy search -> exp/<name>/<first test set>_sherpa_onnx.json
#   stage  6  int8       PaddleSlim PTQ of the encoder on training   -> exp/<name>/export/int8/,
#                        data, then every method                        <test set>_export_int8[_chunkN]_<method>/
#                        and ONNX Runtime's INT8 MatMul on export/onnx -> exp/<name>/export/onnx_int8/, ..._export_int8_onnx_...;
#                        sherpa-onnx on its INT8 files                 -> exp/<name>/<first test set>_sherpa_onnx_int8.json
#                        (--trt fp16,int8: stages 5/6 also through TensorRT on a GPU -> ..._trt_fp16/_trt_int8_...)
#   stage  7  transcribe paddle-asr transcribe (attention rescoring, or CTC prefix beam for CTC-only models) on a few test files with the INT8 and FP32 models, and on
#                        a long recording of test utterances (VAD segments, JSON), and its reference aligned
#                        to it (align; where each utterance's ends fall) -> exp/<name>/long_recording/
#   stage  8  serve      paddle-asr serve on the INT8 bundle (127.0.0.1, a free port); PaddleSpeech 1.5.0's own
#                        client streams a few test files (partials, final, reference printed; a model that
#                        cannot stream goes through the offline HTTP endpoint); the server is stopped
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../utils/log.sh
. "$root/utils/log.sh"

# Options (each can be given as --name value).
corpus=aishell          # corpus reader for stage 0
data_dir=""             # where the corpus is (or will be put by stage -1)
config=conf/conformer.yaml  # training config, relative to the recipe directory
decode_configs="conf/decode.yaml"  # space-separated decoding configs for stages 3, 5, 6
exp_name=""             # default: the config file name without .yaml
model=""                # shorthand: --model M uses conf/M.yaml, conf/M_decode.yaml if any, and conf/M_chunk_decode.yaml
                        # (or conf/chunk_decode.yaml for a streaming model, e.g. chunk_conformer)
sets=""                 # stage 0: data sets as corpus subsets (LibriSpeech), e.g. "dev=dev-clean,dev-other test_clean=test-clean"
train_set=train         # the data set training uses (data/<train_set>; must match the config's data.train)
test_sets="test"        # space-separated data sets stages 3, 5 and 6 decode and score
lm_order=5              # stage 0 builds data/lm/char_<N>gram.arpa for LM beam search (0: no LM)
stage=0
nproc=1                 # stage 1: data-parallel CPU processes
gpus=""                 # stage 1: GPU ids, one training process each (e.g. 0,1,2,3); Paddle CUDA image only
ips=""                  # stage 1: the machines of a multi-machine run (run the same command on each)
init_from=""            # stage 1: fine-tune from this checkpoint's weights (.pdparams; default: the config's training.init_from)
stop_stage=8
nj=2                    # processes for CMVN statistics
num_calib=64            # training utterances used to calibrate INT8
int8_functions=encoder  # exported programs stage 6 quantizes: encoder and/or decoder (comma-separated)
batch_size=0            # decoding batch size (stages 3, 5, 6); 0: the decode config's
threads=2               # CPU threads of Paddle Inference
side_by_side=true       # stages 5/6: Paddle Inference and ONNX Runtime (then sherpa-onnx) test at once, on half the threads each
trt=""                  # stages 5/6 also on GPU through TensorRT: fp16 (FP32 export), int8 (INT8 bundle), or fp16,int8
trt_gpu=0               # the GPU TensorRT runs on
num_transcribe=3        # test files transcribed by stage 7 and streamed to the server by stage 8
long_seconds=60         # length of the long recording stage 7 assembles from test utterances and transcribes
force=false             # rebuild a stage's outputs even when they are complete
__option_names="corpus data_dir config decode_configs exp_name model sets train_set test_sets lm_order stage stop_stage nproc gpus ips init_from nj num_calib int8_functions batch_size threads side_by_side trt trt_gpu num_transcribe long_seconds force"
# shellcheck source=../utils/parse_options.sh
. "$root/utils/parse_options.sh"
if [ "$#" -gt 0 ]; then echo "$0: unexpected argument '$1' (options are --name value)" >&2; exit 1; fi

# shellcheck source=../utils/setup_env.sh
. "$root/utils/setup_env.sh"
if [ -n "$model" ]; then
  config="conf/$model.yaml"
  if [ ! -f "$config" ]; then
    models=""
    for f in conf/*.yaml; do [[ "$f" == *decode* ]] || models+="$(basename "$f" .yaml) "; done
    echo "$0: --model $model: no $config in $(pwd); models here: $models" >&2
    exit 1
  fi
  if [ -f "conf/${model}_decode.yaml" ]; then decode_configs="conf/${model}_decode.yaml"; fi
  # A streaming model also decodes chunk by chunk: its own chunk decode config, else the recipe's.
  streaming='import sys; from paddle_asr.config import load_config; sys.exit(0 if load_config(sys.argv[1]).model.streaming else 1)'
  if [ -f "conf/${model}_chunk_decode.yaml" ]; then
    decode_configs="$decode_configs conf/${model}_chunk_decode.yaml"
  elif [ -f conf/chunk_decode.yaml ] && "${PADDLE_ASR_PYTHON:-python}" -c "$streaming" "$config" 2> /dev/null; then
    decode_configs="$decode_configs conf/chunk_decode.yaml"
  fi
fi
[ -n "$exp_name" ] || exp_name="$(basename "$config" .yaml)"
exp="exp/$exp_name"
force_flag=()
[ "$force" = true ] && force_flag=(--force)
case "$side_by_side" in true|false) ;; *) echo "$0: --side_by_side $side_by_side: use true or false" >&2; exit 1 ;; esac
IFS=, read -r -a trt_list <<< "$trt"
for precision in "${trt_list[@]}"; do
  case "$precision" in fp16|int8) ;; *) echo "$0: --trt $trt: use fp16, int8 or fp16,int8" >&2; exit 1 ;; esac
done
if [ -z "$data_dir" ]; then echo "$0: --data_dir is required (where the corpus is)" >&2; exit 1; fi

run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

# Stages 5/6 with --trt: the same test sets through Paddle Inference + TensorRT on a GPU, after
# the CPU run. Where this Paddle has no TensorRT (a CPU build), that is reported and skipped.
tensorrt_eval() {  # precision bundle out_prefix
  local precision="$1" bundle="$2" out_prefix="$3"
  [[ ",$trt," == *",$precision,"* ]] || return 0
  local why status=0
  why="$(paddle-asr devices --require tensorrt 2>&1 > /dev/null)" || status=$?
  if [ "$status" -ne 0 ]; then
    # Only the error line: Paddle may print warnings of its own on stderr at import.
    log "TensorRT ${precision^^} evaluation skipped: $(grep '^error: ' <<< "$why" | sed 's/^error: //')"
    return 0
  fi
  test_export_all "$bundle" "$out_prefix" --device "gpu:$trt_gpu" --trt "$precision"
}

# Stages 5/6: `paddle-asr test-export` of bundle $1 on every test set with every decode config, in one
# process (the start-up once), into $exp/<test set>_$2[_chunkN]_<method>/; the other arguments are
# options, where {test_set} stands for the test set.
test_export_all() {
  local bundle="$1" suffix="$2"
  shift 2
  paddle-asr test-export --bundle "$bundle" --data "${test_manifests[@]}" --decode_config "${decode_list[@]}" \
    --out_prefix "$exp/{test_set}_$suffix" --batch_size "$batch_size" "$@" "${force_flag[@]}"
}

# Stages 5/6 test with Paddle Inference and ONNX Runtime at once when side_by_side is true, each on
# half of $threads and pinned to half of this process's CPUs: a predictor gains little from its
# second thread (the demo's stages 5 and 6 on a 2-core AMD EPYC, Zen 4: 98 and 151 s one after the
# other on 2 threads, 58 and 106 s side by side on one each, bench/RESULTS.md), and a lane of its own
# keeps the RTFs those of that many threads rather than of threads that share cores.
# `start_job LANE COMMAND...` runs a command (or a function of this script) in the background on lane
# 0 or 1; the first job's output goes out as it comes, the others' waits in a file. `wait_jobs` prints
# those after the first job's, in the order the jobs started, and fails when one failed. Without
# side_by_side, a job runs at once.
job_pids=()
job_logs=()
lane_threads="$threads"
lane_cpus=()
if [ "$side_by_side" = true ]; then lane_threads=$(( threads > 1 ? threads / 2 : 1 )); fi
split_cpus() {  # lane_cpus <- the two halves of this process's CPUs (taskset lists), once, where taskset is
  if [ "${#lane_cpus[@]}" -gt 0 ] || ! command -v taskset > /dev/null; then return 0; fi
  read -r -a lane_cpus < <("${PADDLE_ASR_PYTHON:-python}" -c 'import os
cpus = sorted(os.sched_getaffinity(0)); half = max(1, len(cpus) // 2)
print(",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:] or cpus)))')
}
start_job() {
  local lane="$1" out=""
  shift
  if [ "$side_by_side" != true ]; then "$@"; return; fi
  set -m  # the job in a process group of its own, which stop_jobs ends whole
  if [ "${#job_pids[@]}" -eq 0 ]; then
    on_lane "$lane" "$@" &  # the first job prints as it goes, so a long test shows its progress
  else
    out="$(mktemp "${TMPDIR:-/tmp}/paddle_asr_stage.XXXXXX")"
    on_lane "$lane" "$@" > "$out" 2>&1 &
  fi
  set +m
  job_pids+=("$!")
  job_logs+=("$out")
}
on_lane() {  # lane command...: in a background job, pinned to the lane's CPUs
  if [ "${#lane_cpus[@]}" -eq 2 ]; then taskset -pc "${lane_cpus[$1]}" "$BASHPID" > /dev/null; fi
  shift
  "$@"
}
wait_jobs() {
  local i status=0
  for i in "${!job_pids[@]}"; do
    wait "${job_pids[$i]}" || status=1
    if [ -n "${job_logs[$i]}" ]; then
      cat "${job_logs[$i]}"
      rm -f "${job_logs[$i]}"
    fi
  done
  job_pids=()
  job_logs=()
  return "$status"
}
# A recipe stopped half-way (Ctrl-C, a failing stage) stops its jobs too, the processes they started
# included: the terminal's interrupt reaches only the foreground process group.
stop_jobs() {
  local pid log_file
  for pid in "${job_pids[@]}"; do kill -- "-$pid" 2> /dev/null || true; done
  for log_file in "${job_logs[@]}"; do [ -z "$log_file" ] || rm -f "$log_file"; done
}
trap stop_jobs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Stages 5/6: bundle $1's tests (results ..._$2_...) on Paddle Inference and, where its ONNX export $3
# is, on ONNX Runtime (..._$2_onnx_...) followed by sherpa-onnx (result suffix $4), side by side; the
# other arguments go to both tests.
test_runtimes() {
  local bundle="$1" suffix="$2" onnx_dir="$3" sherpa_suffix="$4"
  shift 4
  if [ ! -d "$onnx_dir" ]; then
    test_export_all "$bundle" "$suffix" --threads "$threads" "$@"
    return
  fi
  if [ "$side_by_side" = true ]; then split_cpus; fi
  start_job 0 test_export_all "$bundle" "$suffix" --threads "$lane_threads" "$@"
  start_job 1 onnx_tests "$bundle" "${suffix}_onnx" "$onnx_dir" "$sherpa_suffix" --threads "$lane_threads" "$@"
  wait_jobs
}
onnx_tests() {
  local bundle="$1" suffix="$2" onnx_dir="$3" sherpa_suffix="$4"
  shift 4
  test_export_all "$bundle" "$suffix" --runtime onnx "$@"
  sherpa_check "$onnx_dir" "$sherpa_suffix"
}

# sherpa-onnx (offline and streaming) beside our greedy search on the ONNX files of $1 (U2 exports only),
# on the first test set: it checks the files, and each set costs four full decodes.
sherpa_check() {
  local onnx_dir="$1" suffix="$2"
  [ -f "$onnx_dir/model.onnx" ] || return 0
  paddle-asr sherpa-check --onnx "$onnx_dir" --data "data/${test_list[0]}/data.list" \
    --out "$exp/${test_list[0]}_$suffix.json" --threads "$lane_threads"
}

log "recipe $(pwd), corpus $corpus at $data_dir, config $config, experiment $exp, stages $stage..$stop_stage"

if run_stage -1; then
  stage_banner -1 "get the corpus"
  if [ -f local/get_corpus.sh ]; then
    bash local/get_corpus.sh --data_dir "$data_dir" --force "$force" --sets "$sets"
  else
    log "this recipe has no local/get_corpus.sh: the corpus must already be at $data_dir"
  fi
fi

if run_stage 0; then
  stage_banner 0 "data preparation"
  paddle-asr prepare --corpus "$corpus" --data_dir "$data_dir" --out_dir data --config "$config" --nj "$nj" \
    --sets "$sets" --train_set "$train_set" "${force_flag[@]}"
  if [ "$lm_order" -gt 0 ]; then
    # An n-gram of the model's units over the training transcripts, for ctc_beam_search_lm (Kaldi builds its LM in data prep too).
    paddle-asr build-lm --text "data/$train_set/data.list" --units data/lang_char/vocab.txt --dev data/dev/data.list \
      --order "$lm_order" --out "data/lm/char_${lm_order}gram.arpa" "${force_flag[@]}"
  fi
fi

if run_stage 1; then
  stage_banner 1 "training"
  paddle-asr train --config "$config" --exp_dir "$exp" --nproc "$nproc" --gpus "$gpus" --ips "$ips" \
    --init_from "$init_from" "${force_flag[@]}"
fi

if run_stage 2; then
  stage_banner 2 "checkpoint averaging"
  paddle-asr average --exp_dir "$exp" "${force_flag[@]}"
fi

read -r -a decode_list <<< "$decode_configs"
read -r -a test_list <<< "$test_sets"
test_manifests=()
for test_set in "${test_list[@]}"; do test_manifests+=("data/$test_set/data.list"); done

if run_stage 3; then
  stage_banner 3 "test with the dynamic-graph model"
  paddle-asr test --exp_dir "$exp" --data "${test_manifests[@]}" --decode_config "${decode_list[@]}" \
    --out_prefix "$exp/{test_set}" --batch_size "$batch_size" "${force_flag[@]}"
fi

if run_stage 4; then
  stage_banner 4 "export for Paddle Inference and ONNX"
  paddle-asr export --exp_dir "$exp" --out "$exp/export/fp32" "${force_flag[@]}"
fi

if run_stage 5; then
  stage_banner 5 "test the exported model"
  test_runtimes "$exp/export/fp32" export_fp32 "$exp/export/onnx" sherpa_onnx --compare_prefix "$exp/{test_set}"
  tensorrt_eval fp16 "$exp/export/fp32" export_fp32_trt_fp16
fi

if run_stage 6; then
  stage_banner 6 "INT8 post-training quantization"
  paddle-asr quantize --bundle "$exp/export/fp32" --out "$exp/export/int8" --calib "data/$train_set/data.list" \
    --num_calib "$num_calib" --functions "$int8_functions" "${force_flag[@]}"
  test_runtimes "$exp/export/int8" export_int8 "$exp/export/onnx_int8" sherpa_onnx_int8
  tensorrt_eval int8 "$exp/export/int8" export_int8_trt_int8
fi

if run_stage 7; then
  stage_banner 7 "transcribe"
  first_test="${test_list[0]}"
  mapfile -t wavs < <(head -n "$num_transcribe" "data/$first_test/wav.scp" | cut -d' ' -f2-)
  for precision in int8 fp32; do
    if [ -d "$exp/export/$precision" ]; then
      log "paddle-asr transcribe --bundle $exp/export/$precision (${#wavs[@]} test files; reference: data/$first_test/text)"
      paddle-asr transcribe --bundle "$exp/export/$precision" --threads "$threads" "${wavs[@]}"
    fi
  done
  # Long-form: test utterances joined with silences, cut back into segments by the VAD.
  long="$exp/long_recording"
  bundle="$exp/export/int8"
  [ -d "$bundle" ] || bundle="$exp/export/fp32"
  paddle-asr make-long-recording --data "data/$first_test/data.list" --out "$long/test_${long_seconds}s.wav" --seconds "$long_seconds"
  log "paddle-asr transcribe --bundle $bundle --format json $long/test_${long_seconds}s.wav"
  paddle-asr transcribe --bundle "$bundle" --threads "$threads" \
    --format json --progress off "$long/test_${long_seconds}s.wav" > "$long/transcript.json.tmp"
  mv "$long/transcript.json.tmp" "$long/transcript.json"
  paddle-asr long-recording-report --parts "$long/test_${long_seconds}s.parts.json" --transcript "$long/transcript.json"
  # Forced alignment of the recording's concatenated reference: where it puts each utterance's ends.
  for precision in int8 fp32; do
    [ -d "$exp/export/$precision" ] || continue
    log "paddle-asr align --model $exp/export/$precision --format json --text $long/test_${long_seconds}s.text $long/test_${long_seconds}s.wav"
    if paddle-asr align --model "$exp/export/$precision" --threads "$threads" --format json \
         --text "$long/test_${long_seconds}s.text" --out "$long/alignment_$precision.json" "$long/test_${long_seconds}s.wav"; then
      paddle-asr long-recording-align-report --parts "$long/test_${long_seconds}s.parts.json" \
        --alignment "$long/alignment_$precision.json"
    else
      log "stage 7: the reference of the long recording cannot be aligned with the $precision model (the reason is above)"
    fi
  done
fi

if run_stage 8; then
  stage_banner 8 "serve"
  bundle="$exp/export/int8"
  [ -d "$bundle" ] || bundle="$exp/export/fp32"
  # Starts and always stops the server itself; on a failure it exits non-zero with the server's log tail.
  "${PADDLE_ASR_PYTHON:-python}" -m paddle_asr.serve.paddlespeech_client --bundle "$bundle" --wav_scp "data/${test_list[0]}/wav.scp" \
    --text "data/${test_list[0]}/text" --num_files "$num_transcribe" --threads "$threads" --log "$exp/serve/server.log"
fi

if [ "$stop_stage" -ge 3 ] && [ -d "$exp" ]; then
  stage_banner summary "results"
  paddle-asr results --exp_dir "$exp" --results_md RESULTS.md
fi
log "done: stages $stage..$stop_stage of $(basename "$(pwd)")"
