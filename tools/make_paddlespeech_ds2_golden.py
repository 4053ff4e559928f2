#!/usr/bin/env python
"""Golden reference fixtures from PaddleSpeech 1.5.0's DeepSpeech2Model (asr0: offline, online, online GRU).

Run inside the side environment made by tools/setup_paddlespeech_env.sh:

    .venv-paddlespeech/bin/python tools/make_paddlespeech_ds2_golden.py --out tests/fixtures/paddlespeech

Three small DeepSpeech2 models (161-dim fbank, 2 RNN layers of 8 units, 21 output units) get fixed,
seeded random weights:
  deepspeech2:            LSTM, bidirect (the offline asr0 layout)
  deepspeech2_online:     LSTM, forward  (the online asr0 layout)
  deepspeech2_online_gru: GRU, forward   (use_gru: True; the GRU state layout in streaming)
The RNNs stay tiny because the first one reads the 32 x 39 = 1248-dim convolution output whatever
its size; 161 bins are kept since that width depends on them.

For each model a folder laid out like a PaddleSpeech asr0 experiment is written
(conf/deepspeech2*.yaml in the flat asr0 format, conf/preprocess.yaml, data/mean_std.json,
data/lang_char/vocab.txt, exp/<name>/checkpoints/avg_1.pdparams) plus golden.npz (tensors) and
golden.json (settings, losses, notes). Everything is computed by PaddleSpeech's own code:
CRNNEncoder.forward, CTCDecoder.log_softmax, the model's forward (CTC loss) and its gradients,
CRNNEncoder.forward_chunk_by_chunk; the data pipeline's GlobalCMVN normalises the features.

Input: the real AISHELL utterance BAC009S0724W0121 (426 frames) and its first 300 frames as a
second, shorter utterance, in one zero-padded batch (zero-padded after CMVN, as PaddleSpeech's
collator does). The 161-bin fbank is paddle_asr.features.compute_fbank (dither 0), cross-checked
against PaddleSpeech's own paddlespeech.audio.compliance.kaldi.fbank; it is not stored (the tests
recompute it and check it against the stored first frames and per-bin means).

The .pdparams are written with each LSTM/GRU tensor pickled once although it has two names
(Paddle registers `weight_ih_l0` and `0.cell*.weight_ih` for the same tensor): the state dict
keeps all its keys, the file stays small. `encoder.conv.out.0` (built but never used by
PaddleSpeech's DeepSpeech2) is stored as zeros for the same reason.

Finally every folder is re-loaded the way PaddleSpeech's test_wav.py does (yacs CfgNode,
Transformation(preprocess.yaml), DeepSpeech2Model.from_config, paddle.load) and its CTC
log-probs are checked against golden.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Installs the import stubs (paddlespeech_ctcdecoders, resampy, librosa) and imports paddlespeech
# the way the U2 golden tool does; its helpers (reproducible npz, JSON layout) are reused.
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

import make_paddlespeech_golden as u2g  # noqa: E402
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddlespeech  # noqa: E402
import soundfile  # noqa: E402
from paddlespeech.audio.compliance import kaldi as ps_kaldi  # noqa: E402
from paddlespeech.audio.transform.cmvn import GlobalCMVN as PipelineGlobalCMVN  # noqa: E402
from paddlespeech.audio.transform.transformation import Transformation  # noqa: E402
from paddlespeech.s2t.frontend.featurizer.text_featurizer import TextFeaturizer  # noqa: E402
from paddlespeech.s2t.models.ds2 import DeepSpeech2Model  # noqa: E402
from paddlespeech.s2t.utils.utility import UpdateConfig  # noqa: E402
from yacs.config import CfgNode  # noqa: E402

from paddle_asr.config import FeatureConfig  # noqa: E402
from paddle_asr.features import compute_fbank  # noqa: E402

REPO = u2g.REPO
WAV = u2g.WAV
TRANSCRIPT = u2g.TRANSCRIPT
SHORT_TRANSCRIPT = u2g.SHORT_TRANSCRIPT
SHORT_FRAMES = u2g.SHORT_FRAMES
EXTRA_CHARS = "的一是在不了"  # with the 12 of the transcript, <blank>, <unk>, <eos>: 21 units
FEAT_DIM = 161
STD_FLOOR = u2g.STD_FLOOR
NUM_RNN_LAYERS = 2
RNN_SIZE = 8
CHUNK_SIZES = (1, 3, 8)  # decoder_chunk_size values for forward_chunk_by_chunk (1: PaddleSpeech's test)
HEAD_FRAMES = 32
GRAD_PARAMS = ("decoder.ctc_lo.weight", "encoder.conv.conv.0.weight", "encoder.layernorm_list.0.weight")

MODELS = {
    "deepspeech2": {"rnn_direction": "bidirect", "use_gru": False},
    "deepspeech2_online": {"rnn_direction": "forward", "use_gru": False},
    "deepspeech2_online_gru": {"rnn_direction": "forward", "use_gru": True},
}


def build_vocab() -> list[str]:
    chars = sorted(set(TRANSCRIPT) | set(EXTRA_CHARS))
    return ["<blank>", "<unk>"] + chars + ["<eos>"]


def model_yaml(name: str) -> str:
    """The asr0 config (examples/aishell/asr0/conf/deepspeech2*.yaml, flat layout) at small size."""
    spec = MODELS[name]
    return (
        "###########################################\n"
        "#                   Data                  #\n"
        "###########################################\n"
        "train_manifest: data/manifest.train\n"
        "dev_manifest: data/manifest.dev\n"
        "test_manifest: data/manifest.test\n"
        "min_input_len: 0.0\n"
        "max_input_len: 27.0 # second\n"
        "min_output_len: 0.0\n"
        "max_output_len: .inf\n"
        "min_output_input_ratio: 0.00\n"
        "max_output_input_ratio: .inf\n"
        "\n"
        "###########################################\n"
        "#              Dataloader                 #\n"
        "###########################################\n"
        "vocab_filepath: data/lang_char/vocab.txt\n"
        "spm_model_prefix: ''\n"
        "unit_type: 'char'\n"
        "preprocess_config: conf/preprocess.yaml\n"
        f"feat_dim: {FEAT_DIM}\n"
        "stride_ms: 10.0\n"
        "window_ms: 25.0\n"
        "sortagrad: 0\n"
        "batch_size: 64\n"
        "maxlen_in: 512\n"
        "maxlen_out: 150\n"
        "minibatches: 0\n"
        "batch_count: auto\n"
        "batch_bins: 0\n"
        "batch_frames_in: 0\n"
        "batch_frames_out: 0\n"
        "batch_frames_inout: 0\n"
        "num_workers: 8\n"
        "subsampling_factor: 1\n"
        "num_encs: 1\n"
        "\n"
        "############################################\n"
        "#           Network Architecture           #\n"
        "############################################\n"
        "num_conv_layers: 2\n"
        f"num_rnn_layers: {NUM_RNN_LAYERS}\n"
        f"rnn_layer_size: {RNN_SIZE}\n"
        f"rnn_direction: {spec['rnn_direction']} # [forward, bidirect]\n"
        "num_fc_layers: 0\n"
        "fc_layers_size_list: -1,\n"
        f"use_gru: {spec['use_gru']}\n"
        "blank_id: 0\n"
        "\n"
        "###########################################\n"
        "#                Training                 #\n"
        "###########################################\n"
        f"n_epoch: {50 if spec['rnn_direction'] == 'bidirect' else 30}\n"
        "accum_grad: 1\n"
        "lr: 5.0e-4\n"
        "lr_decay: 0.93\n"
        "weight_decay: 1.0e-6\n"
        "global_grad_clip: 3.0\n"
        "dist_sampler: False\n"
        "log_interval: 100\n"
        "checkpoint:\n"
        "  kbest_n: 50\n"
        "  latest_n: 5\n"
    )


def preprocess_yaml() -> str:
    """examples/aishell/asr0/conf/preprocess.yaml: the asr1 one with 161 mel bins."""
    return u2g.preprocess_yaml_text(FEAT_DIM)


def load_cfg(path: Path, vocab_size: int) -> CfgNode:
    """The config as PaddleSpeech's test_wav.py builds it (input_dim/output_dim filled at run time)."""
    config = CfgNode(new_allowed=True)
    config.merge_from_file(str(path))
    with UpdateConfig(config):
        config.input_dim = config.feat_dim
        config.output_dim = vocab_size
    return config


def randomize_weights(model: paddle.nn.Layer, rng: np.random.Generator) -> dict[str, list[int]]:
    """Redraw every parameter (unique tensors, in named_parameters order): weights N(0, 1/fan_in)
    (fan_in: input width of a Linear [in, out], of an RNN [gates*H, in], in_ch*k*k of a conv), biases
    N(0, 0.1^2), LayerNorm weight 1 + N(0, 0.1^2); ctc_lo weight x2 for peakier posteriors;
    encoder.conv.out.0 zeros (never used by DeepSpeech2)."""
    shapes = {}
    for name, p in model.named_parameters():
        shape = list(p.shape)
        shapes[name] = shape
        if name.startswith("encoder.conv.out."):
            value = np.zeros(shape)
        elif name.startswith("encoder.layernorm_list."):
            value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            value = 0.1 * rng.standard_normal(shape)
        else:
            if len(shape) == 4:
                fan_in = shape[1] * shape[2] * shape[3]
            elif ".rnn." in name:
                fan_in = shape[1]
            else:  # paddle Linear weight [in, out]
                fan_in = shape[0]
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
            if name == "decoder.ctc_lo.weight":
                value = 2.0 * value
        p.set_value(value.astype(np.float32))
    return shapes


def save_deduplicated(state: dict, path: Path) -> int:
    """paddle.save of a state dict whose aliased tensors (same data under two names) are pickled
    once: keys that hold the same tensor map to the same numpy array, which pickle memoises.
    paddle.load returns every key. Returns the number of distinct arrays."""
    by_ptr: dict[int, np.ndarray] = {}
    out = {}
    for key, tensor in state.items():
        ptr = tensor.data_ptr() if hasattr(tensor, "data_ptr") else id(tensor)
        if ptr not in by_ptr:
            by_ptr[ptr] = tensor.numpy()
        out[key] = by_ptr[ptr]
    paddle.save(out, str(path), protocol=4)
    loaded = paddle.load(str(path))
    assert set(loaded) == set(state)
    for key in state:
        assert np.array_equal(np.asarray(loaded[key]), state[key].numpy()), key
    return len(by_ptr)


def padded_batch(feats_cmvn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = feats_cmvn.shape[0]
    batch = np.zeros((2, t, FEAT_DIM), np.float32)
    batch[0] = feats_cmvn
    batch[1, :SHORT_FRAMES] = feats_cmvn[:SHORT_FRAMES]
    return batch, np.array([t, SHORT_FRAMES], np.int64)


def make_model_fixture(name: str, out_dir: Path, vocab: list[str], feats_cmvn: np.ndarray, mean_std: dict,
                       seed: int, meta: dict) -> dict:
    spec = MODELS[name]
    folder = out_dir / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "conf").mkdir(parents=True)
    (folder / "data" / "lang_char").mkdir(parents=True)
    ckpt_dir = folder / "exp" / name / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    vocab_path = folder / "data" / "lang_char" / "vocab.txt"
    vocab_path.write_text("".join(v + "\n" for v in vocab), encoding="utf-8")
    (folder / "data" / "mean_std.json").write_text(json.dumps(mean_std), encoding="utf-8")
    config_name = "deepspeech2.yaml" if spec["rnn_direction"] == "bidirect" else "deepspeech2_online.yaml"
    (folder / "conf" / config_name).write_text(model_yaml(name), encoding="utf-8")
    (folder / "conf" / "preprocess.yaml").write_text(preprocess_yaml(), encoding="utf-8")

    text_feature = TextFeaturizer(unit_type="char", vocab=str(vocab_path), spm_model_prefix="")
    assert text_feature.vocab_list == vocab and text_feature.blank_id == 0
    text_ids = text_feature.featurize(TRANSCRIPT)
    short_ids = text_feature.featurize(SHORT_TRANSCRIPT)
    assert text_feature.unk_id not in text_ids

    config = load_cfg(folder / "conf" / config_name, len(vocab))
    model_index = list(MODELS).index(name)
    paddle.seed(seed)
    model = DeepSpeech2Model.from_config(config)
    rng = np.random.default_rng([seed, model_index])
    shapes = randomize_weights(model, rng)
    model.eval()
    arrays: dict[str, np.ndarray] = {}

    # Full utterances in one padded batch: encoder, CTC log-probs, final RNN states.
    batch, lengths = padded_batch(feats_cmvn)
    xs, xlens = paddle.to_tensor(batch), paddle.to_tensor(lengths)
    with paddle.no_grad():
        eouts, eouts_len, h_box, c_box = model.encoder(xs, xlens, None, None)
        log_probs = model.decoder.log_softmax(eouts)
    arrays["encoder_out"] = eouts.numpy()
    arrays["encoder_lengths"] = eouts_len.numpy()
    arrays["ctc_log_probs"] = log_probs.numpy()
    arrays["final_h"] = h_box.numpy()
    if not spec["use_gru"]:
        arrays["final_c"] = c_box.numpy()
    # The first utterance alone (no padding in the batch) gives the same frames and states.
    with paddle.no_grad():
        single, single_len, h1, _ = model.encoder(xs[:1], xlens[:1], None, None)
    alone_diff = float(np.abs(single.numpy() - eouts.numpy()[:1]).max())

    # Training loss (PaddleSpeech's forward: CTC sum over the batch / batch size) and gradients.
    labels = np.full((2, len(text_ids)), -1, np.int64)
    labels[0, :len(text_ids)] = text_ids
    labels[1, :len(short_ids)] = short_ids
    label_lengths = np.array([len(text_ids), len(short_ids)], np.int64)
    arrays["labels"] = labels
    arrays["label_lengths"] = label_lengths
    model.train()
    loss = model(xs, xlens, paddle.to_tensor(labels), paddle.to_tensor(label_lengths))
    loss.backward()
    params = dict(model.named_parameters())
    for pname in GRAD_PARAMS:
        arrays["grad." + pname] = params[pname].grad.numpy()
    model.clear_gradients()
    model.eval()
    per_utt = []
    with paddle.no_grad():
        for b in range(2):
            l_b = model(xs[b:b + 1, :lengths[b]], xlens[b:b + 1], paddle.to_tensor(labels[b:b + 1, :label_lengths[b]]),
                        paddle.to_tensor(label_lengths[b:b + 1]))
            per_utt.append(float(l_b))

    # Streaming: CRNNEncoder.forward_chunk_by_chunk, one utterance at a time (a batch would give the
    # shorter one chunks of 0 frames, whose output length PaddleSpeech computes as -1).
    chunk_info = {}
    if spec["rnn_direction"] == "forward":
        for n in CHUNK_SIZES:
            for b in range(2):
                x_b = paddle.to_tensor(batch[b:b + 1, :lengths[b]])
                with paddle.no_grad():
                    outs, out_lens, hb, cb = model.encoder.forward_chunk_by_chunk(x_b, xlens[b:b + 1], n)
                    lp = [model.decoder.log_softmax(o).numpy()[0] for o in outs]
                chunk_lens = [int(v.numpy()[0]) for v in out_lens]
                valid = np.concatenate([p[:k] for p, k in zip(lp, chunk_lens)], axis=0)
                tag = f"chunk{n}_utt{b}"
                arrays[f"{tag}_ctc_log_probs"] = valid
                arrays[f"{tag}_lengths"] = np.array(chunk_lens, np.int64)
                arrays[f"{tag}_final_h"] = hb.numpy()
                if not spec["use_gru"]:
                    arrays[f"{tag}_final_c"] = cb.numpy()
                full = arrays["ctc_log_probs"][b, :int(arrays["encoder_lengths"][b])]
                assert valid.shape == full.shape, (valid.shape, full.shape)
                chunk_info[tag] = {
                    "decoder_chunk_size": n,
                    "chunks": len(chunk_lens),
                    "output_frames": int(valid.shape[0]),
                    "max_abs_diff_vs_full_utterance": float(np.abs(valid - full).max()),
                    "max_abs_diff_final_h_vs_full_utterance": float(
                        np.abs(hb.numpy() - arrays["final_h"][:, b:b + 1]).max()),
                }

    state = model.state_dict()
    distinct = save_deduplicated(state, ckpt_dir / "avg_1.pdparams")
    u2g.save_npz(folder / "golden.npz", arrays)
    golden = {
        "generator": "tools/make_paddlespeech_ds2_golden.py",
        "versions": meta["versions"],
        "seed": seed,
        "model": {
            "name": name,
            "class": "paddlespeech.s2t.models.ds2.DeepSpeech2Model",
            "config_file": f"conf/{config_name}",
            "feat_size": FEAT_DIM,
            "num_rnn_layers": NUM_RNN_LAYERS,
            "rnn_layer_size": RNN_SIZE,
            **spec,
            "num_parameters": int(sum(int(np.prod(s)) for s in shapes.values())),
            "num_state_dict_entries": len(state),
            "num_distinct_tensors_in_checkpoint": distinct,
            "checkpoint": f"exp/{name}/checkpoints/avg_1.pdparams",
        },
        "weights": " ".join(randomize_weights.__doc__.split()),
        "vocab_size": len(vocab),
        "vocab": vocab,
        "blank": 0,
        "transcript": TRANSCRIPT,
        "short_transcript": SHORT_TRANSCRIPT,
        "batch": {
            "utterances": [f"{WAV.name} (all {feats_cmvn.shape[0]} frames)", f"its first {SHORT_FRAMES} frames"],
            "input_lengths": lengths,
            "padding": "zeros after CMVN (PaddleSpeech pads the normalised features)",
            "encoder_lengths": arrays["encoder_lengths"],
        },
        "features": meta["features"],
        "loss": {
            "batch": float(loss),
            "per_utterance_alone": per_utt,
            "rule": "paddle.nn.CTCLoss(blank=0, reduction='sum') / batch size (CTCDecoder reduction=True, "
                    "batch_average=True); ctc_grad_norm_type None (no norm_by_times)",
            "gradients": list(GRAD_PARAMS),
        },
        "max_abs_diff_first_utterance_alone_vs_in_batch": alone_diff,
        "chunk_by_chunk": chunk_info,
        "arrays": {
            "encoder_out / ctc_log_probs": "[2, T', d] / [2, T', V] of the padded batch; frames beyond "
                                           "encoder_lengths are not meaningful",
            "final_h / final_c": "[layers * directions, 2, H]: PaddleSpeech's state boxes (layer-major, forward "
                                 "then backward); final_c absent for a GRU",
            "labels / label_lengths": "the loss batch targets, padded with -1",
            "grad.<param>": "gradient of the batch loss",
            "chunk<n>_utt<b>_*": "forward_chunk_by_chunk(decoder_chunk_size=n) on utterance b alone: the valid "
                                 "CTC log-probs of every chunk concatenated, each chunk's output length, final states",
        },
        "notes": NOTES,
    }
    (folder / "golden.json").write_text(u2g.dump_json(u2g._py(golden)) + "\n", encoding="utf-8")
    return golden


def verify_with_paddlespeech_pipeline(out_dir: Path, names, vocab_size: int) -> dict:
    """Reload each folder as PaddleSpeech's asr0 test_wav.py does and compare its CTC log-probs."""
    audio, _ = soundfile.read(str(WAV), dtype="int16", always_2d=True)
    report = {}
    cwd = os.getcwd()
    try:
        for name in names:
            folder = out_dir / name
            os.chdir(folder)  # the yaml paths are relative to the experiment folder
            config_file = next(iter(sorted(Path("conf").glob("deepspeech2*.yaml"))))
            config = load_cfg(config_file, vocab_size)
            model = DeepSpeech2Model.from_config(config)
            model.eval()
            model.set_state_dict(paddle.load(f"exp/{name}/checkpoints/avg_1.pdparams"))
            feat = Transformation(config.preprocess_config)(audio[:, 0], train=False)
            with paddle.no_grad():
                eouts, _, _, _ = model.encoder(paddle.to_tensor(feat, dtype="float32").unsqueeze(0),
                                               paddle.to_tensor([feat.shape[0]], dtype="int64"), None, None)
                lp = model.decoder.log_softmax(eouts).numpy()[0]
            golden = np.load("golden.npz")["ctc_log_probs"][0]
            diff = float(np.abs(lp - golden).max())
            assert diff < 1e-3, (name, diff)
            report[name] = {"max_abs_diff_ctc_log_probs_paddlespeech_pipeline_vs_golden": diff}
    finally:
        os.chdir(cwd)
    return report


NOTES = [
    "Features: PaddleSpeech's asr0 data pipeline applies cmvn_json (float64 numpy: (x - mean) / max(sqrt(var), "
    "1e-20), cast to float32) before the model; its DeepSpeech2Model has no CMVN. The checkpoint has no "
    "global_cmvn entries.",
    "Conv front end (Conv2dSubsampling4Pure): conv(1->32, 3, stride 2) + ReLU, conv(32->32, 3, stride 2) + ReLU, "
    "transpose to [B, T', C, F'] and flatten channel-major into 32 * 39 = 1248 features; num_conv_layers is "
    "ignored; encoder.conv.out.0 (Linear 1248 -> 32) exists but is never called. Lengths ((T - 1) // 2 - 1) // 2.",
    "Each RNN layer is a one-layer paddle nn.LSTM / nn.GRU called with sequence_length = the subsampled lengths "
    "(padded steps do not enter the recurrence; the backward direction starts at each utterance's last valid "
    "frame; final states are those at the last valid frame), followed by nn.LayerNorm(directions * H), epsilon "
    "1e-5. No FC layers (num_fc_layers 0). decoder.ctc_lo: Linear(directions * H, V).",
    "State boxes: h and c of every layer concatenated on axis 0 -> [layers * directions, B, H]; for a GRU the "
    "returned c box is the c box that was passed in (None when none).",
    "forward_chunk_by_chunk: chunk window (n - 1) * 4 + 7 input frames, stride 4 * n; the input is zero-padded so "
    "that the last window ends at the padded end; chunk length = min(len - start, window); the states of each "
    "chunk are the next chunk's initial states. The last chunk may produce 0 output frames (its states are then "
    "unchanged).",
    "The loss value does not depend on ctc_grad_norm_type: 'instance' only makes warpctc divide each utterance's "
    "gradient by its frame count; 'batch' and 'frame' are accepted by PaddleSpeech's CTCLoss but dropped on "
    "Paddle 3 (nn.CTCLoss.forward has no such arguments).",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "paddlespeech")
    ap.add_argument("--seed", type=int, default=20250)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    args.out = args.out.resolve()

    assert paddlespeech.__version__ == "1.5.0", paddlespeech.__version__
    assert paddle.__version__ == "3.0.0", paddle.__version__

    samples, sr = soundfile.read(str(WAV), dtype="int16")
    assert sr == 16000 and samples.ndim == 1
    feats = compute_fbank(samples, FeatureConfig(num_mel_bins=FEAT_DIM))
    wav = paddle.to_tensor(samples[None].astype(np.float32))
    ps_feats = ps_kaldi.fbank(wav, n_mels=FEAT_DIM, frame_length=25.0, frame_shift=10.0, dither=0.0,
                              energy_floor=0.0, sr=16000).numpy()
    assert ps_feats.shape == feats.shape, (ps_feats.shape, feats.shape)
    f64 = feats.astype(np.float64)
    mean_std = {"mean_stat": f64.sum(axis=0).tolist(), "var_stat": (f64 * f64).sum(axis=0).tolist(),
                "frame_num": int(feats.shape[0])}
    cmvn = PipelineGlobalCMVN(mean_std, norm_means=True, norm_vars=True, std_floor=STD_FLOOR)
    feats_cmvn = np.asarray(cmvn(feats), dtype=np.float64).astype(np.float32)
    versions = {
        "paddlespeech": paddlespeech.__version__,
        "paddlepaddle": paddle.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    meta = {
        "versions": versions,
        "features": {
            "wav": str(WAV.relative_to(REPO)),
            "fbank": "paddle_asr.features.compute_fbank(samples_int16, FeatureConfig(num_mel_bins=161)), dither 0",
            "num_frames": int(feats.shape[0]),
            "max_abs_diff_vs_paddlespeech_compliance_kaldi_fbank": float(np.abs(ps_feats - feats).max()),
            "feats_sha256": u2g._sha256(feats),
            "mean_std_json": "data/mean_std.json computed from this utterance's frames (float64 sums)",
        },
    }
    vocab = build_vocab()
    args.out.mkdir(parents=True, exist_ok=True)
    # The raw features are not stored (the tests recompute them); these pin them down.
    u2g.save_npz(args.out / "input_fbank161.npz", {
        "feats_head": feats[:HEAD_FRAMES], "feats_mean": feats.mean(axis=0), "feats_std": feats.std(axis=0)})
    summary = {}
    for name in args.models:
        golden = make_model_fixture(name, args.out, vocab, feats_cmvn, mean_std, args.seed, meta)
        summary[name] = {"loss": golden["loss"]["batch"], "encoder_lengths": golden["batch"]["encoder_lengths"],
                         "chunk": {k: v["max_abs_diff_vs_full_utterance"] for k, v in golden["chunk_by_chunk"].items()},
                         "parameters": golden["model"]["num_parameters"]}
        print(f"wrote {args.out / name}")
    summary["verification_with_paddlespeech_pipeline"] = verify_with_paddlespeech_pipeline(
        args.out, args.models, len(vocab))
    fbank_diff = meta["features"]["max_abs_diff_vs_paddlespeech_compliance_kaldi_fbank"]
    summary["fbank_max_abs_diff_vs_paddlespeech"] = fbank_diff
    print(json.dumps(u2g._py(summary), ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
