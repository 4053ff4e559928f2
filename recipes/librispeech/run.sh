#!/usr/bin/env bash
# LibriSpeech (English, WER). Stages and options: see ../../local/run_stages.sh.
#   bash run.sh --stage -1 --stop_stage 3 --data_dir /path/to/librispeech
# --data_dir holds LibriSpeech/<subset>/ or the <subset>.tar.gz archives of OpenSLR 12; stage -1
# downloads (md5-checked, resumable) the subsets named in --sets that are not there yet.
# Units: 5,000 sentencepiece pieces trained by stage 0 on train_960; to use a trained model instead,
# set data.bpe_model in the config. Train on one subset: --sets "train_clean_100=train-clean-100 ..."
# with data.train: data/train_clean_100/data.list, --train_set train_clean_100.
# DeepSpeech2 (characters): --model deepspeech2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
sets="train_960=train-clean-100,train-clean-360,train-other-500 dev=dev-clean,dev-other"
sets="$sets test_clean=test-clean test_other=test-other"
exec bash ../../local/run_stages.sh --corpus librispeech --data_dir /export/data/librispeech --config conf/conformer.yaml \
  --sets "$sets" --train_set train_960 --test_sets "test_clean test_other" "$@"
