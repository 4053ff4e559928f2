#!/usr/bin/env bash
# The embedded English demo: a synthetic corpus in LibriSpeech's exact layout (FLAC, SPEAKER/CHAPTER
# folders, .trans.txt), generated offline by stage -1 with espeak-ng English voices, then the real
# LibriSpeech preparation (sentencepiece units) and every later stage, scored in WER, on a CPU; stages 3,
# 5 and 6 score test_clean and test_unseen_voices (voice variants no other subset has).
#   bash run.sh                      # stages -1..8
#   bash run.sh --stage 3 --stop_stage 3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec bash ../../local/run_stages.sh --corpus librispeech --data_dir corpus --config conf/conformer.yaml \
  --decode_configs conf/decode.yaml \
  --sets "train_clean_100=train-clean-100 dev=dev-clean test_clean=test-clean test_unseen_voices=test-unseen-voices" \
  --train_set train_clean_100 --test_sets "test_clean test_unseen_voices" --stage -1 "$@"
