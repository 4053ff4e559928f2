#!/usr/bin/env python
"""Golden reference fixtures from PaddleSpeech 1.5.0's U2Model (conformer, chunk conformer, U2++).

Run inside the side environment made by tools/setup_paddlespeech_env.sh:

    .venv-paddlespeech/bin/python tools/make_paddlespeech_golden.py --out tests/fixtures/paddlespeech

Three small PaddleSpeech U2 models ("conformer": full-context, batch-norm conv module;
"chunk_conformer": causal conv, dynamic-chunk training, layer-norm conv module;
"chunk_conformer_u2pp": the same encoder with U2++'s bitransformer decoder, a right-to-left
decoder beside the left-to-right one, as examples/wenetspeech/asr1/conf/chunk_conformer_u2pp.yaml)
get fixed, seeded random weights. For each one a folder is written, laid out like a PaddleSpeech
experiment / released model (conf/model.yaml, conf/preprocess.yaml, conf/decode.yaml,
exp/<name>/checkpoints/avg_1.pdparams, data/lang_char/vocab.txt, data/mean_std.json), plus
golden.npz (tensors) and golden.json (decoding results, losses, settings, notes).

Everything is computed by PaddleSpeech's own code (U2Model.decode and its internal functions,
the encoder's forward / forward_chunk / forward_chunk_by_chunk, the decoder, the CTC and
label-smoothing losses, the data pipeline's GlobalCMVN); the only things computed here are the
80-dim Kaldi fbank (kaldi_native_fbank, cross-checked against PaddleSpeech's own
paddlespeech.audio.compliance.kaldi.fbank) and re-implementations of the two beam searches used
only to measure how far the decisions are from ties (and asserted to reproduce PaddleSpeech's
results exactly).

Deterministic: every weight is drawn from numpy's PCG64 generator seeded with a fixed seed; the
seed actually used is the first one from --seed upwards for which the decoding results are
non-empty and no deciding score gap is below --min-gap (recorded in golden.json). The output is
byte-for-byte reproducible (fixed zip timestamps in the .npz files).

To stay within the fixture size budget, the input shared by the models is stored once, in
<out>/input.npz (feats: raw fbank [T, 80] before CMVN; feats_cmvn_head: its first 32 frames after
CMVN). The full CMVN'd features and the loss batch are exact functions of feats (recipes and
sha256 digests in golden.json).

Finally every written folder is re-loaded the way PaddleSpeech's own inference does (yacs
CfgNode, Transformation(preprocess.yaml) with PaddleSpeech's fbank and cmvn_json, from_config,
paddle.load) and all decoding results are checked against golden.json.
"""

from __future__ import annotations

import sys
import types


def _install_import_stubs() -> None:
    """Modules PaddleSpeech imports at import time but which the U2 code never calls.

    * paddlespeech_ctcdecoders: the SWIG CTC beam-search decoder (DeepSpeech2 only). It has no
      wheel for Python 3.11, and when the import fails paddlespeech/s2t/modules/ctc.py runs
      `pip install paddlespeech_ctcdecoders` from inside the import. A stub whose attributes
      are empty classes lets paddlespeech/s2t/decoders/ctcdecoder/swig_wrapper.py import.
    * resampy: imported at module level by paddlespeech.audio.backends (resampling only); the
      real package drags in numba + llvmlite (~210 MB).
    * librosa: imported at module level by paddlespeech.audio.transform.spectrogram, which the
      verification step needs for the `fbank_kaldi` preprocess type (that one only uses paddle).
    """

    def _getattr(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})

    for name in ("paddlespeech_ctcdecoders", "resampy", "librosa"):
        if name in sys.modules:
            continue
        mod = types.ModuleType(name)
        mod.__getattr__ = _getattr  # PEP 562 module __getattr__
        mod.__dict__["__stub__"] = True
        sys.modules[name] = mod


_install_import_stubs()

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import warnings  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import kaldi_native_fbank as knf  # noqa: E402
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import soundfile  # noqa: E402

paddle.set_device("cpu")

import paddlespeech  # noqa: E402
from paddlespeech.audio.compliance import kaldi as ps_kaldi  # noqa: E402
from paddlespeech.audio.transform.cmvn import GlobalCMVN as PipelineGlobalCMVN  # noqa: E402
from paddlespeech.audio.transform.transformation import Transformation  # noqa: E402
from paddlespeech.audio.utils.tensor_utils import add_sos_eos, pad_sequence, st_reverse_pad_list  # noqa: E402
from paddlespeech.s2t.frontend.featurizer.text_featurizer import TextFeaturizer  # noqa: E402
from paddlespeech.s2t.models.u2 import U2Model  # noqa: E402
from paddlespeech.s2t.modules import mask as ps_mask  # noqa: E402
from paddlespeech.s2t.modules.mask import subsequent_mask  # noqa: E402
from paddlespeech.s2t.utils.utility import UpdateConfig, log_add  # noqa: E402
from yacs.config import CfgNode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WAV = REPO / "tests" / "fixtures" / "aishell-BAC009S0724W0121.wav"
TRANSCRIPT = "广州市房地产中介协会分析"
SHORT_TRANSCRIPT = "广州市房地"  # target of the 2nd (300-frame) utterance of the loss batch
SHORT_FRAMES = 300
# Common characters added to the transcript's to make a ~40-unit vocabulary.
EXTRA_CHARS = "的一是在不了有和人这上大国我以要他时来用们生到作为"
BEAM_SIZE = 5
RESCORE_CTC_WEIGHT = 0.5
FEAT_DIM = 80
STD_FLOOR = 1.0e-20  # paddlespeech.audio.transform.cmvn.GlobalCMVN default
CTC_SCALE = 4.0  # ctc.ctc_lo weight multiplier (peaky CTC posteriors)
DEC_SCALE = 4.0  # decoder.output_layer weight multiplier
CTC_BLANK_FRACTION = 0.85  # ctc.ctc_lo.bias[blank] is raised until ~85% of frames are blank (greedy),
# as in a trained model, so that the CTC hypotheses have transcript-like lengths
DEC_EOS_BIAS = 1.0  # added to decoder.output_layer.bias[eos]: hypotheses end
CONTEXT_CHUNKS = [(16, -1), (4, 2)]  # (decoding_chunk_size, num_decoding_left_chunks)

ENCODER_CONF_COMMON = {
    "output_size": 16,
    "attention_heads": 4,
    "linear_units": 32,
    "num_blocks": 2,
    "dropout_rate": 0.1,
    "positional_dropout_rate": 0.1,
    "attention_dropout_rate": 0.0,
    "input_layer": "conv2d",
    "normalize_before": True,
    "cnn_module_kernel": 7,
    "use_cnn_module": True,
    "activation_type": "swish",
    "pos_enc_layer_type": "rel_pos",
    "selfattention_layer_type": "rel_selfattn",
}
MODELS = {
    "conformer": {
        **ENCODER_CONF_COMMON,
        "causal": False,
        "cnn_module_norm": "batch_norm",
        "use_dynamic_chunk": False,
        "use_dynamic_left_chunk": False,
    },
    "chunk_conformer": {
        **ENCODER_CONF_COMMON,
        "causal": True,
        "use_dynamic_chunk": True,
        "cnn_module_norm": "layer_norm",
        "use_dynamic_left_chunk": False,
    },
}
# U2++ (decoder: bitransformer): the chunk conformer's encoder. Appended last, so that the other
# models keep their weight seeds (np.random.default_rng([seed, index in MODELS])).
MODELS["chunk_conformer_u2pp"] = dict(MODELS["chunk_conformer"])
# decoder_conf.r_num_blocks and model_conf.reverse_weight of the bitransformer models (PaddleSpeech's
# U2++ configs: 3 blocks each way, 0.3); one right-to-left block here, fewer than the two left-to-right.
BITRANSFORMER = {"chunk_conformer_u2pp": {"r_num_blocks": 1, "reverse_weight": 0.3}}
DECODER_CONF = {
    "attention_heads": 4,
    "linear_units": 32,
    "num_blocks": 2,
    "dropout_rate": 0.1,
    "positional_dropout_rate": 0.1,
    "self_attention_dropout_rate": 0.0,
    "src_attention_dropout_rate": 0.0,
}
MODEL_CONF = {
    "ctc_weight": 0.3,
    "lsm_weight": 0.1,
    "length_normalized_loss": False,
    "init_type": "kaiming_uniform",
}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _py(x):
    """JSON-friendly python value."""
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [_py(v) for v in x]
    if isinstance(x, dict):
        return {k: _py(v) for k, v in x.items()}
    return x


def dump_json(obj, indent: int = 0) -> str:
    """Indented JSON with lists of scalars kept on one line."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {dump_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [f"{pad}{dump_json(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(obj, ensure_ascii=False)


def save_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed zip timestamps, sorted names)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _yaml_scalar(v) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, str):
        return f"'{v}'"
    return str(v)


def _min(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return min(vals) if vals else None


# --------------------------------------------------------------------------------------------
# Vocabulary, features, CMVN
# --------------------------------------------------------------------------------------------
def build_vocab() -> list[str]:
    chars = sorted(set(TRANSCRIPT) | set(EXTRA_CHARS))
    return ["<blank>", "<unk>"] + chars + ["<eos>"]


def fbank_options() -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.snip_edges = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.round_to_power_of_two = True
    opts.mel_opts.num_bins = FEAT_DIM
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.energy_floor = 0.0
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def compute_fbank(samples_int16: np.ndarray) -> np.ndarray:
    fb = knf.OnlineFbank(fbank_options())
    fb.accept_waveform(16000.0, samples_int16.astype(np.float32))
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)]).astype(np.float32)


def paddlespeech_fbank(samples_int16: np.ndarray) -> np.ndarray:
    """What PaddleSpeech's `fbank_kaldi` preprocess step (LogMelSpectrogramKaldi) computes."""
    wav = paddle.to_tensor(np.expand_dims(samples_int16, 0), dtype=paddle.float32)
    mat = ps_kaldi.fbank(
        wav, n_mels=FEAT_DIM, frame_length=25.0, frame_shift=10.0, dither=0.0, energy_floor=0.0, sr=16000
    )
    return np.squeeze(mat.numpy())


# --------------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------------
def decoder_type(name: str) -> str:
    return "bitransformer" if name in BITRANSFORMER else "transformer"


def reverse_weight(name: str) -> float:
    """model_conf.reverse_weight, which attention rescoring uses too (decode.yaml reverse_weight)."""
    return BITRANSFORMER[name]["reverse_weight"] if name in BITRANSFORMER else 0.0


def decoder_conf(name: str) -> dict:
    """DECODER_CONF, with r_num_blocks after num_blocks for a bitransformer (as PaddleSpeech's U2++ yaml)."""
    conf = {}
    for key, value in DECODER_CONF.items():
        conf[key] = value
        if key == "num_blocks" and name in BITRANSFORMER:
            conf["r_num_blocks"] = BITRANSFORMER[name]["r_num_blocks"]
    return conf


def model_conf(name: str) -> dict:
    """MODEL_CONF, with reverse_weight before init_type for a bitransformer (as PaddleSpeech's U2++ yaml)."""
    conf = {}
    for key, value in MODEL_CONF.items():
        if key == "init_type" and name in BITRANSFORMER:
            conf["reverse_weight"] = reverse_weight(name)
        conf[key] = value
    return conf


def model_config(name: str, vocab_size: int) -> dict:
    return {
        "cmvn_file": None,
        "cmvn_file_type": "json",
        "input_dim": FEAT_DIM,
        "output_dim": vocab_size,
        "encoder": "conformer",
        "encoder_conf": dict(MODELS[name]),
        "decoder": decoder_type(name),
        "decoder_conf": decoder_conf(name),
        "model_conf": model_conf(name),
    }


def decode_conf(name: str) -> dict:
    chunk = MODELS[name]["use_dynamic_chunk"]
    extra = {"reverse_weight": reverse_weight(name)} if name in BITRANSFORMER else {}
    return {
        "beam_size": BEAM_SIZE,
        "decode_batch_size": 1,
        "error_rate_type": "cer",
        "decoding_method": "attention_rescoring",
        "ctc_weight": RESCORE_CTC_WEIGHT,
        "decoding_chunk_size": 16 if chunk else -1,
        "num_decoding_left_chunks": -1,
        "simulate_streaming": bool(chunk),
        **extra,
    }


def _block(d: dict, indent: str = "    ") -> str:
    return "".join(f"{indent}{k}: {_yaml_scalar(v)}\n" for k, v in d.items())


def write_model_yaml(path: Path, name: str, vocab_size: int) -> None:
    """conf/model.yaml in the layout of examples/aishell/asr1/conf/{conformer,chunk_conformer}.yaml
    plus what released models add (input_dim/output_dim read by U2Model.from_config, decode:)."""
    text = (
        "############################################\n"
        "#           Network Architecture           #\n"
        "############################################\n"
        "# Small fixture model with fixed random weights (tools/make_paddlespeech_golden.py).\n"
        "# CMVN is applied by the data pipeline (preprocess.yaml: cmvn_json), not inside the model.\n"
        "cmvn_file: \n"
        "cmvn_file_type: \"json\"\n"
        f"input_dim: {FEAT_DIM}\n"
        f"output_dim: {vocab_size}\n"
        "# encoder related\n"
        "encoder: conformer\n"
        "encoder_conf:\n" + _block(MODELS[name]) +
        "# decoder related\n"
        f"decoder: {decoder_type(name)}\n"
        "decoder_conf:\n" + _block(decoder_conf(name)) +
        "# hybrid CTC/attention\n"
        "model_conf:\n" + _block(model_conf(name)) +
        "\n"
        "###########################################\n"
        "#                   Data                  #\n"
        "###########################################\n"
        "train_manifest: data/manifest.train\n"
        "dev_manifest: data/manifest.dev\n"
        "test_manifest: data/manifest.test\n"
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
        "batch_size: 32\n"
        "maxlen_in: 512\n"
        "maxlen_out: 150\n"
        "minibatches: 0\n"
        "batch_count: auto\n"
        "batch_bins: 0\n"
        "batch_frames_in: 0\n"
        "batch_frames_out: 0\n"
        "batch_frames_inout: 0\n"
        "num_workers: 2\n"
        "subsampling_factor: 1\n"
        "num_encs: 1\n"
        "\n"
        "###########################################\n"
        "#                Training                 #\n"
        "###########################################\n"
        "n_epoch: 240\n"
        "accum_grad: 1\n"
        "global_grad_clip: 5.0\n"
        "dist_sampler: True\n"
        "optim: adam\n"
        "optim_conf:\n"
        "  lr: 0.001\n"
        "  weight_decay: 1.0e-6\n"
        "scheduler: warmuplr\n"
        "scheduler_conf:\n"
        "  warmup_steps: 25000\n"
        "  lr_decay: 1.0\n"
        "log_interval: 100\n"
        "checkpoint:\n"
        "  kbest_n: 50\n"
        "  latest_n: 5\n"
        "\n"
        "###########################################\n"
        "#                Decoding                 #\n"
        "###########################################\n"
        "decode:\n" + _block(decode_conf(name), "  ")
    )
    path.write_text(text, encoding="utf-8")


def preprocess_yaml_text(feat_dim: int = FEAT_DIM) -> str:
    """PaddleSpeech's examples/aishell/asr{0,1}/conf/preprocess.yaml: fbank, JSON CMVN, SpecAugment."""
    return (
        "process:\n"
        "  # extract kaldi fbank from PCM\n"
        "  - type: fbank_kaldi\n"
        "    fs: 16000\n"
        f"    n_mels: {feat_dim}\n"
        "    n_shift: 160\n"
        "    win_length: 400\n"
        "    dither: 0.1\n"
        "  - type: cmvn_json\n"
        "    cmvn_path: data/mean_std.json\n"
        "  # these three processes are a.k.a. SpecAugument\n"
        "  - type: time_warp\n"
        "    max_time_warp: 5\n"
        "    inplace: true\n"
        "    mode: PIL\n"
        "  - type: freq_mask\n"
        "    F: 30\n"
        "    n_mask: 2\n"
        "    inplace: true\n"
        "    replace_with_zero: false\n"
        "  - type: time_mask\n"
        "    T: 40\n"
        "    n_mask: 2\n"
        "    inplace: true\n"
        "    replace_with_zero: false\n"
    )


def write_preprocess_yaml(path: Path) -> None:
    path.write_text(preprocess_yaml_text(), encoding="utf-8")


def write_decode_yaml(path: Path, name: str) -> None:
    d = decode_conf(name)
    path.write_text(
        f"beam_size: {d['beam_size']}\n"
        f"decode_batch_size: {d['decode_batch_size']}\n"
        "error_rate_type: cer\n"
        f"decoding_method: {d['decoding_method']} # 'attention', 'ctc_greedy_search', "
        "'ctc_prefix_beam_search', 'attention_rescoring'\n"
        f"ctc_weight: {d['ctc_weight']} # ctc weight for attention rescoring decode mode.\n"
        + (f"reverse_weight: {d['reverse_weight']} # reverse weight for attention rescoring decode mode.\n"
           if "reverse_weight" in d else "") +
        f"decoding_chunk_size: {d['decoding_chunk_size']} # decoding chunk size. Defaults to -1.\n"
        "    # <0: for decoding, use full chunk.\n"
        "    # >0: for decoding, use fixed chunk size as set.\n"
        "    # 0: used for training, it's prohibited here.\n"
        f"num_decoding_left_chunks: {d['num_decoding_left_chunks']}  # number of left chunks for "
        "decoding. Defaults to -1.\n"
        f"simulate_streaming: {_yaml_scalar(d['simulate_streaming'])}  # simulate streaming inference. "
        "Defaults to False.\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------------------------
# Model and weights
# --------------------------------------------------------------------------------------------
def build_model(name: str, vocab_size: int) -> U2Model:
    model = U2Model.from_config(copy.deepcopy(model_config(name, vocab_size)))
    model.eval()
    return model


def _layer_kinds(model: paddle.nn.Layer) -> dict[str, str]:
    kinds = {}
    for prefix, layer in model.named_sublayers():
        if isinstance(layer, paddle.nn.LayerNorm):
            kinds[prefix] = "layer_norm"
        elif isinstance(layer, paddle.nn.BatchNorm1D):
            kinds[prefix] = "batch_norm"
        elif isinstance(layer, paddle.nn.Embedding):
            kinds[prefix] = "embedding"
    return kinds


def raise_blank(model: U2Model, xs, xlens, blank: int) -> float:
    """Add a bias to the blank logit so that about CTC_BLANK_FRACTION of the frames are blank."""
    with paddle.no_grad():
        enc, _ = model._forward_encoder(xs, xlens, -1, -1, False)
        logits = model.ctc.ctc_lo(enc).numpy()[0]
    others = np.delete(logits, blank, axis=1).max(axis=1)
    need = np.quantile(others - logits[:, blank], CTC_BLANK_FRACTION)
    bias = float(max(0.0, math.ceil(need / 0.25) * 0.25))
    state = model.state_dict()
    b = state["ctc.ctc_lo.bias"].numpy().copy()
    b[blank] += np.float32(bias)
    model.set_state_dict({"ctc.ctc_lo.bias": paddle.to_tensor(b)})
    assert np.array_equal(model.state_dict()["ctc.ctc_lo.bias"].numpy(), b)
    return bias


def randomize_weights(model: U2Model, rng: np.random.Generator, blank: int, eos: int) -> dict:
    """Redraw every parameter/buffer of the state dict (sorted by name) from `rng`."""
    kinds = _layer_kinds(model)
    state = model.state_dict()
    new_state = {}
    for name in sorted(state):
        shape = list(state[name].shape)
        prefix, _, leaf = name.rpartition(".")
        kind = kinds.get(prefix)
        if kind == "batch_norm":
            if leaf == "weight":
                v = 1.0 + rng.uniform(-0.3, 0.3, shape)
            elif leaf == "bias":
                v = rng.uniform(-0.2, 0.2, shape)
            elif leaf == "_mean":
                v = rng.normal(0.0, 0.3, shape)
            elif leaf == "_variance":
                v = rng.uniform(0.3, 1.5, shape)
            else:
                raise KeyError(name)
        elif kind == "layer_norm":
            v = 1.0 + rng.uniform(-0.3, 0.3, shape) if leaf == "weight" else rng.uniform(-0.2, 0.2, shape)
        elif kind == "embedding":
            v = rng.normal(0.0, 1.0, shape)
        elif leaf in ("pos_bias_u", "pos_bias_v"):
            v = rng.uniform(-0.5, 0.5, shape)
        elif leaf == "bias":
            v = rng.uniform(-0.1, 0.1, shape)
        elif leaf == "weight":
            # paddle Linear weight is [in, out]; Conv weight is [out, in/groups, *kernel]
            fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
            bound = math.sqrt(3.0 / fan_in)  # variance 1/fan_in
            v = rng.uniform(-bound, bound, shape)
        else:
            raise KeyError(f"unhandled state entry {name} {shape}")
        new_state[name] = v
    new_state["ctc.ctc_lo.weight"] = new_state["ctc.ctc_lo.weight"] * CTC_SCALE
    for name in new_state:  # decoder.output_layer, or a bitransformer's left_ and right_decoder's
        if name.startswith("decoder.") and name.endswith("output_layer.weight"):
            new_state[name] = new_state[name] * DEC_SCALE
        elif name.startswith("decoder.") and name.endswith("output_layer.bias"):
            new_state[name][eos] += DEC_EOS_BIAS
    tensors = {k: paddle.to_tensor(v.astype(np.float32)) for k, v in new_state.items()}
    missing, unexpected = model.set_state_dict(tensors)
    assert not missing and not unexpected, (missing, unexpected)
    after = model.state_dict()
    for k, v in new_state.items():
        assert np.array_equal(after[k].numpy(), v.astype(np.float32)), k
    return {k: list(v.shape) for k, v in new_state.items()}


# --------------------------------------------------------------------------------------------
# Re-implementations used only to measure decision margins (asserted equal to PaddleSpeech's)
# --------------------------------------------------------------------------------------------
def prefix_beam_search_margins(ctc_log_probs: np.ndarray, beam: int, blank: int = 0):
    """U2BaseModel._ctc_prefix_beam_search, step by step, recording decision gaps."""
    from collections import defaultdict

    cur = [(tuple(), (0.0, -float("inf")))]
    first_prune_gaps, cutoff_gaps, order_gaps = [], [], []
    for t in range(ctc_log_probs.shape[0]):
        logp = ctc_log_probs[t]
        order = np.argsort(-logp, kind="stable")
        srt = logp[order]
        first_prune_gaps.append(float(srt[beam - 1] - srt[beam]))
        nxt = defaultdict(lambda: (-float("inf"), -float("inf")))
        for s in order[:beam]:
            s = int(s)
            ps = float(logp[s])
            for prefix, (pb, pnb) in cur:
                last = prefix[-1] if len(prefix) > 0 else None
                if s == blank:
                    n_pb, n_pnb = nxt[prefix]
                    nxt[prefix] = (log_add([n_pb, pb + ps, pnb + ps]), n_pnb)
                elif s == last:
                    n_pb, n_pnb = nxt[prefix]
                    nxt[prefix] = (n_pb, log_add([n_pnb, pnb + ps]))
                    n_prefix = prefix + (s,)
                    n_pb, n_pnb = nxt[n_prefix]
                    nxt[n_prefix] = (n_pb, log_add([n_pnb, pb + ps]))
                else:
                    n_prefix = prefix + (s,)
                    n_pb, n_pnb = nxt[n_prefix]
                    nxt[n_prefix] = (n_pb, log_add([n_pnb, pb + ps, pnb + ps]))
        items = sorted(nxt.items(), key=lambda x: log_add(list(x[1])), reverse=True)
        scores = [log_add(list(v)) for _, v in items]
        if len(scores) > beam:
            cutoff_gaps.append(scores[beam - 1] - scores[beam])
        kept = scores[:beam]
        order_gaps.append(min((kept[i] - kept[i + 1] for i in range(len(kept) - 1)), default=None))
        cur = items[:beam]
    hyps = [(y[0], log_add([y[1][0], y[1][1]])) for y in cur]
    margins = {
        "min_first_prune_gap": _min(first_prune_gaps),
        "min_beam_cutoff_gap": _min(cutoff_gaps),
        "min_order_gap_any_step": _min(order_gaps),
        "min_order_gap_final": order_gaps[-1],
    }
    return hyps, margins


def attention_beam_margins(model: U2Model, encoder_out, encoder_mask, beam: int, use_cache: bool = True):
    """U2BaseModel.recognize for batch 1, step by step, recording decision gaps.

    use_cache=True reproduces PaddleSpeech exactly (including that the decoder layer cache is
    NOT re-ordered when the beams are re-ordered); use_cache=False recomputes every step from
    the full prefix (the textbook algorithm)."""
    eos = model.eos
    maxlen = encoder_out.shape[1]
    enc = encoder_out.tile([beam, 1, 1])
    enc_mask = encoder_mask.tile([beam, 1, 1])
    hyps = np.full([beam, 1], model.sos, dtype=np.int64)
    scores = np.array([0.0] + [-np.inf] * (beam - 1), dtype=np.float32).reshape(beam, 1)
    end_flag = np.zeros([beam, 1], dtype=bool)
    cache = None
    row_gaps, cand_gaps = [], []
    steps = 0
    for i in range(1, maxlen + 1):
        if end_flag.sum() == beam:
            break
        steps = i
        hyps_mask = subsequent_mask(i).unsqueeze(0).tile([beam, 1, 1])
        logp, new_cache = model.decoder.forward_one_step(
            enc, enc_mask, paddle.to_tensor(hyps), hyps_mask, cache if use_cache else None
        )
        cache = new_cache
        logp = logp.numpy()
        order = np.argsort(-logp, axis=1, kind="stable")
        top_k_index = order[:, :beam].copy()
        top_k_logp = np.take_along_axis(logp, top_k_index, axis=1).copy()
        for r in range(beam):
            if not end_flag[r, 0] and np.isfinite(scores[r, 0]):
                srt = logp[r, order[r]]
                row_gaps.append(float(srt[beam - 1] - srt[beam]))
        for r in range(beam):
            if end_flag[r, 0]:
                top_k_logp[r, 0] = 0.0
                top_k_logp[r, 1:] = -np.inf
                top_k_index[r, :] = eos
        cand = (scores + top_k_logp).reshape(-1)
        idx = np.argsort(-cand, kind="stable")
        finite = cand[idx][np.isfinite(cand[idx])]
        if len(finite) > beam:
            cand_gaps.append(float(finite[beam - 1] - finite[beam]))
        best = idx[:beam]
        scores = cand[best].reshape(beam, 1).astype(np.float32)
        best_pred = top_k_index.reshape(-1)[best]
        hyps = np.concatenate([hyps[best // beam], best_pred.reshape(-1, 1)], axis=1)
        end_flag = (hyps[:, -1] == eos).reshape(-1, 1)
    final = np.sort(scores.reshape(-1))[::-1]
    best_index = int(np.argmax(scores.reshape(-1)))
    result = hyps[best_index, 1:].tolist()
    margins = {
        "min_row_topk_cutoff_gap": _min(row_gaps),
        "min_candidate_cutoff_gap": _min(cand_gaps),
        "final_best_gap": float(final[0] - final[1]) if np.isfinite(final[1]) else None,
        "steps": steps,
        "all_beams_ended": bool(end_flag.all()),
        "final_scores": [float(s) for s in scores.reshape(-1)],
        "final_hyps": [h[1:].tolist() for h in hyps],
    }
    return result, margins


# --------------------------------------------------------------------------------------------
# Golden computations
# --------------------------------------------------------------------------------------------
def strip_eos(ids: list[int], eos: int) -> list[int]:
    out = []
    for t in ids:
        if t == eos:
            break
        out.append(t)
    return out


def rescoring_inputs(model: U2Model, hyps):
    """Exactly the hyps_pad / hyps_lens that U2BaseModel.attention_rescoring builds."""
    hyp_list = []
    for hyp in hyps:
        content = hyp[0] if len(hyp[0]) > 0 else (model.ctc.blank_id,)
        hyp_list.append(paddle.to_tensor(content, dtype=paddle.long))
    hyps_pad = pad_sequence(hyp_list, True, model.ignore_id)
    hyps_lens = paddle.to_tensor([len(h[0]) for h in hyps], dtype=paddle.long)
    hyps_pad, _ = add_sos_eos(hyps_pad, model.sos, model.eos, model.ignore_id)
    return hyps_pad, hyps_lens + 1


def decode_mode(model, text_feature, xs, xlens, chunk, left, streaming, arrays_prefix, arrays):
    eos = model.eos
    rw = model.reverse_weight  # model_conf.reverse_weight (U2++); PaddleSpeech drops it for a transformer
    common = dict(
        decoding_chunk_size=chunk, num_decoding_left_chunks=left, simulate_streaming=streaming
    )
    res = {"decoding_chunk_size": chunk, "num_decoding_left_chunks": left, "simulate_streaming": streaming}
    results = {}
    for method in ("ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"):
        texts, ids = model.decode(
            xs, xlens, text_feature=text_feature, decoding_method=method, beam_size=BEAM_SIZE,
            ctc_weight=RESCORE_CTC_WEIGHT, reverse_weight=rw, **common,
        )
        raw = [int(t) for t in ids[0]]
        results[method] = {"token_ids": strip_eos(raw, eos), "text": texts[0]}
        if method == "attention":
            results[method]["token_ids_raw"] = raw
    with paddle.no_grad():
        encoder_out, encoder_mask = model._forward_encoder(xs, xlens, chunk, left, streaming)
        ctc_log_probs = model.ctc.log_softmax(encoder_out).numpy()
        hyps, enc2 = model._ctc_prefix_beam_search(xs, xlens, BEAM_SIZE, chunk, left, streaming)
        assert np.array_equal(enc2.numpy(), encoder_out.numpy())
        hyps_pad, hyps_lens = rescoring_inputs(model, hyps)
        dec_out, r_dec_out = model.forward_attention_decoder(hyps_pad, hyps_lens, encoder_out, rw)
        dec_out, r_dec_out = dec_out.numpy(), r_dec_out.numpy()
        # the right-to-left decoder's input, as forward_attention_decoder builds it
        r_hyps_pad = st_reverse_pad_list(hyps_pad[:, 1:], hyps_lens - 1, model.sos, model.eos)
        att_result, att_margins = attention_beam_margins(model, encoder_out, encoder_mask, BEAM_SIZE, True)
        att_nocache, att_nocache_margins = attention_beam_margins(
            model, encoder_out, encoder_mask, BEAM_SIZE, False
        )
    # n-best, in PaddleSpeech's order (best first)
    nbest = []
    for hyp, score in hyps:
        nbest.append({"token_ids": list(hyp), "text": text_feature.defeaturize(list(hyp)), "ctc_score": score})
    # rescoring exactly as attention_rescoring (with the right-to-left decoder when reverse_weight > 0)
    totals = []
    for i, (hyp, ctc_score) in enumerate(hyps):
        dscore = 0.0
        for j, w in enumerate(hyp):
            dscore += dec_out[i][j][w]
        dscore += dec_out[i][len(hyp)][eos]
        nbest[i]["decoder_score"] = float(dscore)
        if rw > 0:
            r_score = 0.0
            for j, w in enumerate(hyp):
                r_score += r_dec_out[i][len(hyp) - j - 1][w]
            r_score += r_dec_out[i][len(hyp)][eos]
            nbest[i]["r_decoder_score"] = float(r_score)
            dscore = dscore * (1 - rw) + r_score * rw
        total = dscore + ctc_score * RESCORE_CTC_WEIGHT
        nbest[i]["rescoring_score"] = float(total)
        totals.append(float(total))
    best_index = 0
    best = -float("inf")
    for i, tot in enumerate(totals):
        if tot > best:
            best, best_index = tot, i
    assert list(hyps[best_index][0]) == results["attention_rescoring"]["token_ids"], "rescoring replica"
    assert list(hyps[0][0]) == results["ctc_prefix_beam_search"]["token_ids"]
    # margins
    my_hyps, pbs_margins = prefix_beam_search_margins(ctc_log_probs[0], BEAM_SIZE)
    assert [h for h, _ in my_hyps] == [h for h, _ in hyps], "prefix beam search replica differs"
    assert all(abs(a - b) < 1e-9 for (_, a), (_, b) in zip(my_hyps, hyps, strict=True))
    assert att_result == results["attention"]["token_ids_raw"], (att_result, results["attention"])
    greedy_gaps = []
    for t in range(ctc_log_probs.shape[1]):
        srt = np.sort(ctc_log_probs[0, t])[::-1]
        greedy_gaps.append(float(srt[0] - srt[1]))
    srt_tot = sorted(totals, reverse=True)
    margins = {
        "ctc_greedy_min_top1_top2_gap": min(greedy_gaps),
        "ctc_prefix_beam_search": pbs_margins,
        "ctc_prefix_beam_search_final_nbest_min_gap": min(
            (hyps[i][1] - hyps[i + 1][1] for i in range(len(hyps) - 1)), default=None
        ),
        "attention": {k: v for k, v in att_margins.items() if k not in ("final_hyps", "final_scores")},
        "attention_rescoring_best_vs_second_gap": srt_tot[0] - srt_tot[1],
    }
    results["ctc_prefix_beam_search"]["nbest"] = nbest
    results["attention_rescoring"]["nbest_index"] = best_index
    results["attention"]["final_beams"] = [
        {"token_ids": strip_eos(h, eos), "ends_with_eos": bool(h and h[-1] == eos), "score": s}
        for h, s in zip(att_margins["final_hyps"], att_margins["final_scores"], strict=True)
    ]
    results["attention"]["steps"] = att_margins["steps"]
    results["attention_textbook_no_cache_reuse"] = {
        "token_ids": strip_eos(att_nocache, eos),
        "token_ids_raw": att_nocache,
        "text": text_feature.defeaturize(att_nocache),
        "same_result_as_paddlespeech": strip_eos(att_nocache, eos) == results["attention"]["token_ids"],
        "same_raw_ids_as_paddlespeech": att_nocache == results["attention"]["token_ids_raw"],
    }
    if rw > 0:
        results["attention_rescoring_reverse_weight_0"], margins["attention_rescoring_reverse_weight_0_gap"] = (
            rescoring_without_reverse(model, text_feature, xs, xlens, common, hyps, nbest))
    res["results"] = results
    res["margins"] = margins
    if arrays_prefix is None:  # only the full-context mode stores the decoder tensors (size budget)
        return res, encoder_out.numpy(), ctc_log_probs
    # tensors
    maxlen = max(max(len(h) for h, _ in hyps), 1)
    dh = np.full([len(hyps), maxlen], -1, dtype=np.int64)
    for i, (h, _) in enumerate(hyps):
        dh[i, : len(h)] = h
    arrays[f"{arrays_prefix}decoder_hyps"] = dh
    arrays[f"{arrays_prefix}decoder_hyps_lens"] = np.array([len(h) for h, _ in hyps], dtype=np.int64)
    arrays[f"{arrays_prefix}decoder_in"] = hyps_pad.numpy().astype(np.int64)
    arrays[f"{arrays_prefix}decoder_log_probs"] = dec_out.astype(np.float32)
    if rw > 0:
        arrays[f"{arrays_prefix}decoder_r_in"] = r_hyps_pad.numpy().astype(np.int64)
        arrays[f"{arrays_prefix}decoder_r_log_probs"] = r_dec_out.astype(np.float32)
    arrays[f"{arrays_prefix}nbest_ctc_scores"] = np.array([s for _, s in hyps], dtype=np.float64)
    arrays[f"{arrays_prefix}nbest_rescoring_scores"] = np.array(totals, dtype=np.float64)
    return res, encoder_out.numpy(), ctc_log_probs


def rescoring_without_reverse(model, text_feature, xs, xlens, common, hyps, nbest) -> tuple[dict, float]:
    """U2++: attention_rescoring by PaddleSpeech's decode with reverse_weight 0 (the left-to-right
    decoder alone), checked against the n-best's decoder scores; (result, best-vs-second gap)."""
    texts, ids = model.decode(
        xs, xlens, text_feature=text_feature, decoding_method="attention_rescoring", beam_size=BEAM_SIZE,
        ctc_weight=RESCORE_CTC_WEIGHT, reverse_weight=0.0, **common,
    )
    totals = [e["decoder_score"] + ctc_score * RESCORE_CTC_WEIGHT for e, (_, ctc_score) in zip(nbest, hyps)]
    best_index = max(range(len(totals)), key=lambda i: (totals[i], -i))  # the first maximum
    token_ids = strip_eos([int(t) for t in ids[0]], model.eos)
    assert list(hyps[best_index][0]) == token_ids, "rescoring (reverse_weight 0) replica"
    srt = sorted(totals, reverse=True)
    return {"token_ids": token_ids, "text": texts[0], "nbest_index": best_index}, srt[0] - srt[1]


def chunk_caches(model, xs, chunk, left, n_chunks, arrays, tag):
    """Run encoder.forward_chunk on the first n_chunks windows (as forward_chunk_by_chunk does)."""
    enc = model.encoder
    subsampling = enc.embed.subsampling_rate
    context = enc.embed.right_context + 1
    stride = subsampling * chunk
    window = (chunk - 1) * subsampling + context
    required_cache_size = chunk * left
    att_cache = paddle.zeros([0, 0, 0, 0])
    cnn_cache = paddle.zeros([0, 0, 0, 0])
    offset = 0
    info = []
    outs = []
    with paddle.no_grad():
        for k in range(n_chunks):
            cur = k * stride
            end = min(cur + window, xs.shape[1])
            y, att_cache, cnn_cache = enc.forward_chunk(
                xs[:, cur:end, :], offset, required_cache_size, att_cache, cnn_cache
            )
            info.append({
                "chunk_index": k, "input_frames": [cur, end], "offset_in": offset,
                "output_frames": int(y.shape[1]), "required_cache_size": required_cache_size,
                "att_cache_shape": list(att_cache.shape), "cnn_cache_shape": list(cnn_cache.shape),
            })
            arrays[f"{tag}_att_cache_{k + 1}"] = att_cache.numpy().astype(np.float32)
            arrays[f"{tag}_cnn_cache_{k + 1}"] = cnn_cache.numpy().astype(np.float32)
            outs.append(y.numpy())
            offset += int(y.shape[1])
    return info, np.concatenate(outs, axis=1)


def attention_loss_directions(model, xt, lt, y, text_lens, seed, loss_att) -> dict:
    """U2++: the two attention losses U2Model.forward mixes with reverse_weight, each from
    PaddleSpeech's _calc_att_loss (reverse_weight 0: left to right alone, 1: right to left alone)
    on the encoder output forward computed (the same seed, so the same random chunk)."""
    with paddle.no_grad():
        paddle.seed(seed)
        encoder_out, encoder_mask = model.encoder(xt, lt)
        ylens = paddle.to_tensor(np.array(text_lens, dtype=np.int64))
        l2r, _ = model._calc_att_loss(encoder_out, encoder_mask, paddle.to_tensor(y), ylens, 0.0)
        r2l, _ = model._calc_att_loss(encoder_out, encoder_mask, paddle.to_tensor(y), ylens, 1.0)
    rw = model.reverse_weight
    mixed = (1 - rw) * float(l2r) + rw * float(r2l)
    assert abs(mixed - loss_att) <= 1e-5 * abs(loss_att), (mixed, loss_att)
    return {"loss_att_l2r": float(l2r), "loss_att_r2l": float(r2l),
            "loss_att_rule": f"loss_att = (1 - {rw}) * loss_att_l2r + {rw} * loss_att_r2l"}


def training_losses(model, feats_cmvn, feats_raw, text_ids, short_ids, seed, cmvn_fn, arrays):
    """U2Model.forward (the training loss) in eval mode (dropout off)."""
    T = feats_cmvn.shape[0]
    out = {
        "cmvn_applied_before": True,
        "note": (
            "PaddleSpeech was fed CMVN-normalised feats: the data pipeline applies cmvn_json per utterance, "
            "then the collator pads feats with 0.0 (i.e. 0.0 AFTER CMVN) and text with ignore_id -1. loss_feats "
            "(see loss_feats_recipe) are the RAW fbank (before CMVN), zero-padded. The padded frames DO matter: "
            "Conv2dSubsampling4's mask slicing gives the 300-frame utterance 75 encoder frames although only "
            "((300-1)//2-1)//2 = 74 are computed from real frames; frame 74 sees input frames 296..302. "
            "batch2 = PaddleSpeech's collator (pad 0.0 after CMVN); batch2_raw_pad0_then_cmvn = raw feats "
            "padded with 0.0 and CMVN applied to every frame (pad frames = -mean/std), which is what a model "
            "that applies CMVN itself to zero-padded raw feats computes."
        ),
    }
    # Record the chunk mask the (dynamic-chunk) encoder draws in forward with decoding_chunk_size=0.
    drawn = []
    orig = ps_mask.subsequent_chunk_mask

    def recording(size, chunk_size, num_left_chunks=-1):
        drawn.append({"size": int(size), "chunk_size": int(chunk_size), "num_left_chunks": int(num_left_chunks)})
        return orig(size, chunk_size, num_left_chunks)

    ps_mask.subsequent_chunk_mask = recording

    def run(x, lens, texts, text_lens):
        B = x.shape[0]
        y = np.full([B, max(text_lens)], -1, dtype=np.int64)
        for b, t in enumerate(texts):
            y[b, : len(t)] = t
        xt = paddle.to_tensor(x)
        lt = paddle.to_tensor(np.array(lens, dtype=np.int64))
        with paddle.no_grad():
            _, enc_mask = model.encoder(xt, lt, decoding_chunk_size=-1)
            drawn.clear()
            paddle.seed(seed)
            loss, loss_att, loss_ctc = model(
                xt, lt, paddle.to_tensor(y), paddle.to_tensor(np.array(text_lens, dtype=np.int64)),
            )
        r = {
            "loss": float(loss), "loss_att": float(loss_att), "loss_ctc": float(loss_ctc),
            "batch_size": B, "feats_lengths": list(lens), "text_lengths": list(text_lens),
            "encoder_out_lens": enc_mask.squeeze(1).sum(1).numpy().tolist(),
        }
        if drawn:
            r["dynamic_chunk_mask_drawn"] = list(drawn)
        if model.reverse_weight > 0:
            r.update(attention_loss_directions(model, xt, lt, y, text_lens, seed, r["loss_att"]))
        return r, y

    # raw batch (what golden.npz describes as loss_feats)
    lf = np.zeros([2, T, FEAT_DIM], dtype=np.float32)
    lf[0] = feats_raw
    lf[1, :SHORT_FRAMES] = feats_raw[:SHORT_FRAMES]
    # PaddleSpeech collator: CMVN per utterance, then pad with 0.0
    x2 = np.zeros([2, T, FEAT_DIM], dtype=np.float32)
    x2[0] = feats_cmvn
    x2[1, :SHORT_FRAMES] = feats_cmvn[:SHORT_FRAMES]
    x2_raw_cmvn = cmvn_fn(lf.reshape(-1, FEAT_DIM)).reshape(lf.shape)
    lens2 = [T, SHORT_FRAMES]
    texts2 = [text_ids, short_ids]
    tl2 = [len(text_ids), len(short_ids)]
    try:
        out["batch1"], _ = run(x2[:1], [T], [text_ids], [len(text_ids)])
        out["batch2"], y2 = run(x2, lens2, texts2, tl2)
        out["batch2_raw_pad0_then_cmvn"], _ = run(x2_raw_cmvn, lens2, texts2, tl2)
        if model.encoder.use_dynamic_chunk:
            # Same batches with full-context attention (what decoding_chunk_size=-1 would use).
            model.encoder.use_dynamic_chunk = False
            try:
                out["batch1_full_context"], _ = run(x2[:1], [T], [text_ids], [len(text_ids)])
                out["batch2_full_context"], _ = run(x2, lens2, texts2, tl2)
                out["batch2_raw_pad0_then_cmvn_full_context"], _ = run(x2_raw_cmvn, lens2, texts2, tl2)
            finally:
                model.encoder.use_dynamic_chunk = True
    finally:
        ps_mask.subsequent_chunk_mask = orig
    out["loss_feats_sha256"] = _sha256(lf)
    out["loss_feats_recipe"] = (
        f"loss_feats = zeros([2, T, 80]); loss_feats[0] = feats; loss_feats[1, :{SHORT_FRAMES}] = "
        f"feats[:{SHORT_FRAMES}] (not stored in golden.npz: an exact function of feats). batch1 = row 0 only."
    )
    arrays["loss_feats_lengths"] = np.array(lens2, dtype=np.int64)
    arrays["loss_text"] = y2.astype(np.int64)
    arrays["loss_text_lengths"] = np.array(tl2, dtype=np.int64)
    return out


def check_margins(margins_by_mode: dict, results_by_mode: dict, min_gap: float) -> list[str]:
    problems = []
    for mode, m in margins_by_mode.items():
        r = results_by_mode[mode]
        for method in ("ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"):
            if not r[method]["token_ids"]:
                problems.append(f"{mode}: {method} empty")
        checks = {
            "greedy": m["ctc_greedy_min_top1_top2_gap"],
            "pbs_cutoff": m["ctc_prefix_beam_search"]["min_beam_cutoff_gap"],
            "pbs_order_final": m["ctc_prefix_beam_search"]["min_order_gap_final"],
            "pbs_first_prune": m["ctc_prefix_beam_search"]["min_first_prune_gap"],
            "att_row": m["attention"]["min_row_topk_cutoff_gap"],
            "att_cand": m["attention"]["min_candidate_cutoff_gap"],
            "att_final": m["attention"]["final_best_gap"],
            "rescoring": m["attention_rescoring_best_vs_second_gap"],
            "rescoring_reverse_weight_0": m.get("attention_rescoring_reverse_weight_0_gap"),
        }
        for k, v in checks.items():
            if v is not None and v < min_gap:
                problems.append(f"{mode}: {k} gap {v:.2e}")
        if not m["attention"]["all_beams_ended"]:
            problems.append(f"{mode}: attention beams did not all end")
    return problems


def make_model_fixture(name, out_dir, vocab, feats_raw, feats_cmvn, mean_std, cmvn_fn, seed, min_gap, meta):
    vocab_size = len(vocab)
    blank, eos = 0, vocab_size - 1
    folder = out_dir / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "conf").mkdir(parents=True)
    (folder / "data" / "lang_char").mkdir(parents=True)
    (folder / "exp" / name / "checkpoints").mkdir(parents=True)
    vocab_path = folder / "data" / "lang_char" / "vocab.txt"
    vocab_path.write_text("".join(v + "\n" for v in vocab), encoding="utf-8")
    (folder / "data" / "mean_std.json").write_text(json.dumps(mean_std), encoding="utf-8")
    write_model_yaml(folder / "conf" / "model.yaml", name, vocab_size)
    write_preprocess_yaml(folder / "conf" / "preprocess.yaml")
    write_decode_yaml(folder / "conf" / "decode.yaml", name)

    text_feature = TextFeaturizer(unit_type="char", vocab=str(vocab_path), spm_model_prefix="")
    assert text_feature.vocab_list == vocab and text_feature.eos_id == eos and text_feature.blank_id == blank
    text_ids = text_feature.featurize(TRANSCRIPT)
    short_ids = text_feature.featurize(SHORT_TRANSCRIPT)
    assert text_feature.unk_id not in text_ids

    xs = paddle.to_tensor(feats_cmvn[None])
    xlens = paddle.to_tensor(np.array([feats_cmvn.shape[0]], dtype=np.int64))
    model_index = list(MODELS).index(name)
    chunk_model = MODELS[name]["use_dynamic_chunk"]
    attempt_log = []
    for attempt in range(200):
        used_seed = seed + attempt
        paddle.seed(used_seed)
        model = build_model(name, vocab_size)
        assert model.sos == model.eos == eos and model.ignore_id == -1
        rng = np.random.default_rng([used_seed, model_index])
        shapes = randomize_weights(model, rng, blank, eos)
        blank_bias = raise_blank(model, xs, xlens, blank)
        arrays = {}
        modes = {}
        enc_full, ctc_full = None, None
        mode_specs = [("full", -1, -1, False, "")]
        if chunk_model:
            mode_specs += [("chunk16", 16, -1, True, None), ("chunk4_left2", 4, 2, True, None)]
        try:
            for mode, chunk, left, streaming, prefix in mode_specs:
                res, enc_out, ctc_lp = decode_mode(
                    model, text_feature, xs, xlens, chunk, left, streaming, prefix, arrays
                )
                modes[mode] = res
                if mode == "full":
                    enc_full, ctc_full = enc_out, ctc_lp
        except AssertionError as exc:  # a replica disagreed: must be a near-tie; try next seed
            attempt_log.append({"seed": used_seed, "rejected": f"replica mismatch {exc}"})
            continue
        problems = check_margins(
            {k: v["margins"] for k, v in modes.items()}, {k: v["results"] for k, v in modes.items()}, min_gap
        )
        if name in BITRANSFORMER and all(
                v["results"]["attention_rescoring"]["token_ids"]
                == v["results"]["attention_rescoring_reverse_weight_0"]["token_ids"] for v in modes.values()):
            # the right-to-left decoder must decide something, or the fixture could not tell it is used
            problems.append("reverse_weight changes no attention_rescoring result")
        if problems:
            attempt_log.append({"seed": used_seed, "rejected": problems[:2]})
            continue
        break
    else:
        raise SystemExit(f"{name}: no seed passed the margin checks")

    arrays["encoder_out"] = enc_full.astype(np.float32)
    arrays["ctc_log_probs"] = ctc_full.astype(np.float32)
    # rename full-mode decoder arrays to the documented names (prefix "")
    chunk_info = {}
    if chunk_model:
        enc = model.encoder
        with paddle.no_grad():
            for chunk, left in CONTEXT_CHUNKS:
                tag = f"chunk{chunk}" + ("" if left < 0 else f"_left{left}")
                by_chunk, _ = enc.forward_chunk_by_chunk(xs, chunk, left)
                masked, _ = enc(xs, xlens, decoding_chunk_size=chunk, num_decoding_left_chunks=left)
                arrays[f"encoder_out_{tag}"] = by_chunk.numpy().astype(np.float32)
                arrays[f"encoder_out_{tag}_masked"] = masked.numpy().astype(np.float32)
                n = 2 if left < 0 else 3
                info, first_outs = chunk_caches(model, xs, chunk, left, n, arrays, tag)
                assert np.allclose(first_outs, by_chunk.numpy()[:, : first_outs.shape[1]], atol=0, rtol=0)
                chunk_info[tag] = {
                    "decoding_chunk_size": chunk,
                    "num_decoding_left_chunks": left,
                    "encoder_out_frames": int(by_chunk.shape[1]),
                    "max_abs_diff_chunk_by_chunk_vs_masked": float(
                        np.abs(by_chunk.numpy() - masked.numpy()).max()
                    ),
                    "first_chunks": info,
                }
    loss = training_losses(model, feats_cmvn, feats_raw, text_ids, short_ids, used_seed, cmvn_fn, arrays)

    paddle.save(model.state_dict(), str(folder / "exp" / name / "checkpoints" / "avg_1.pdparams"))
    save_npz(folder / "golden.npz", arrays)

    golden = {
        "generator": "tools/make_paddlespeech_golden.py",
        "versions": meta["versions"],
        "seed": used_seed,
        "seed_base": seed,
        "rejected_seeds": attempt_log,
        "model": {
            "name": name,
            "class": "paddlespeech.s2t.models.u2.U2Model",
            "config": model_config(name, vocab_size),
            "num_parameters": int(sum(int(np.prod(s)) for k, s in shapes.items())),
            "num_state_dict_entries": len(shapes),
            "checkpoint": f"exp/{name}/checkpoints/avg_1.pdparams",
        },
        "weights": {
            "init": (
                "every state-dict entry redrawn (sorted by name) from np.random.default_rng([seed, "
                f"{model_index}]): Linear/Conv weight U(+-sqrt(3/fan_in)), bias U(+-0.1), LayerNorm/BatchNorm "
                "weight 1+U(+-0.3), bias U(+-0.2), BatchNorm _mean N(0,0.3), _variance U(0.3,1.5), "
                "decoder embedding N(0,1), pos_bias_u/v U(+-0.5)"
            ),
            "ctc_lo_weight_scale": CTC_SCALE,
            "ctc_lo_blank_bias_added": blank_bias,
            "ctc_lo_blank_bias_rule": f"quantile({CTC_BLANK_FRACTION}) over full-context frames of (max non-blank "
                                      "logit - blank logit), rounded up to a multiple of 0.25",
            "decoder_output_layer_weight_scale": DEC_SCALE,
            "decoder_output_layer_eos_bias_added": DEC_EOS_BIAS,
        },
        "vocab_size": vocab_size,
        "vocab": vocab,
        "blank": blank,
        "unk": 1,
        "sos": model.sos,
        "eos": model.eos,
        "ignore_id": model.ignore_id,
        "transcript": TRANSCRIPT,
        "transcript_token_ids": text_ids,
        "input": "../input.npz (feats: raw fbank [T, 80] before CMVN; feats_cmvn_head: first 32 frames after CMVN)",
        "features": meta["features"],
        "decoding": {
            "beam_size": BEAM_SIZE,
            "ctc_weight": RESCORE_CTC_WEIGHT,
            "reverse_weight": model.reverse_weight,
            "api": "U2Model.decode(feats_cmvn[None], [T], text_feature, method, beam_size, ctc_weight, "
                   f"decoding_chunk_size, num_decoding_left_chunks, simulate_streaming, "
                   f"reverse_weight={model.reverse_weight})",
        },
        "modes": modes,
        "chunk_encoder": chunk_info,
        "loss": loss,
        "arrays": array_docs(arrays, chunk_model),
        "paddlespeech_notes": meta["notes"] + (U2PP_NOTES if name in BITRANSFORMER else []),
    }
    (folder / "golden.json").write_text(dump_json(_py(golden)) + "\n", encoding="utf-8")
    return folder, golden


def array_docs(arrays, chunk_model) -> dict:
    docs = {
        "encoder_out": "[1, T', d] encoder output, eval, decoding_chunk_size -1 (full context)",
        "ctc_log_probs": "[1, T', V] ctc.log_softmax(encoder_out)",
        "decoder_hyps": "int64 [N, U] full-mode CTC prefix beam search n-best (best first), padded with -1",
        "decoder_hyps_lens": "int64 [N]",
        "decoder_in": "int64 [N, U+1] exactly what attention_rescoring feeds the decoder: <sos> + hyp, padding "
                      "replaced by <eos>; an EMPTY hyp is fed as <sos>, <blank>(0) with length 1",
        "decoder_log_probs": "[N, U+1, V] log_softmax of decoder(encoder_out, decoder_in, hyps_lens+1)",
        "nbest_ctc_scores": "float64 [N] prefix-beam-search scores (log_add(pb, pnb))",
        "nbest_rescoring_scores": "float64 [N] attention_rescoring score: sum_j logp[j, hyp_j] + logp[len, eos] "
                                  "+ ctc_weight * ctc_score",
        "loss_feats_lengths": "int64 [2] = [T, 300] (loss_feats itself: see loss.loss_feats_recipe)",
        "loss_text": "int64 [2, 12] targets, padded with ignore_id -1 (batch 1 = row 0)",
        "loss_text_lengths": "int64 [2]",
    }
    if "decoder_r_in" in arrays:  # U2++
        docs["decoder_r_in"] = ("int64 [N, U+1] the right-to-left decoder's input: <sos> + reversed hyp, padded "
                                "with <eos> (st_reverse_pad_list; an EMPTY hyp is <sos>, <eos>...)")
        docs["decoder_r_log_probs"] = ("[N, U+1, V] log_softmax of decoder.right_decoder(encoder_out, decoder_r_in, "
                                       "hyps_lens+1): row j scores hyp token len-1-j, row len scores <eos>")
        docs["nbest_rescoring_scores"] = ("float64 [N] attention_rescoring score: (1 - reverse_weight) * (sum_j "
                                          "logp[j, hyp_j] + logp[len, eos]) + reverse_weight * (sum_j "
                                          "r_logp[len-1-j, hyp_j] + r_logp[len, eos]) + ctc_weight * ctc_score")
    if chunk_model:
        docs["encoder_out_chunk16"] = "encoder.forward_chunk_by_chunk(xs, 16, -1)"
        docs["encoder_out_chunk16_masked"] = "encoder(xs, xs_lens, decoding_chunk_size=16, num_decoding_left_chunks=-1)"
        docs["encoder_out_chunk4_left2"] = "encoder.forward_chunk_by_chunk(xs, 4, 2)"
        docs["encoder_out_chunk4_left2_masked"] = (
            "encoder(xs, xs_lens, decoding_chunk_size=4, num_decoding_left_chunks=2)"
        )
        docs["chunk16_att_cache_K"] = ("att_cache returned by encoder.forward_chunk after chunk K (1-based), "
                                       "[layers, heads, cache_t, 2*d_k]: [..., :d_k] keys, [..., d_k:] values")
        docs["chunk16_cnn_cache_K"] = (
            "cnn_cache after chunk K, [layers, 1, d, kernel-1] (conv-module input before pointwise_conv1)"
        )
        docs["chunk4_left2_att_cache_K"] = "as chunk16_att_cache_K with required_cache_size 8 (last 8 frames kept)"
        docs["chunk4_left2_cnn_cache_K"] = "as chunk16_cnn_cache_K"
    out = {}
    for k, v in sorted(arrays.items()):
        doc = docs.get(k)
        if doc is None:
            for pat, d in docs.items():
                if pat.endswith("_K") and k.startswith(pat[:-1]):
                    doc = d
        out[k] = {"shape": list(v.shape), "dtype": str(v.dtype), "doc": doc}
    return out


def verify_with_paddlespeech_pipeline(out_dir: Path, names) -> dict:
    """Reload each written folder the way PaddleSpeech's own inference does (paddlespeech/s2t/exps/u2/
    bin/test_wav.py): yacs CfgNode from conf/model.yaml + conf/decode.yaml, TextFeaturizer from the
    vocab, U2Model.from_config, paddle.load(avg_1.pdparams), Transformation(conf/preprocess.yaml)
    (PaddleSpeech's own fbank_kaldi + cmvn_json with data/mean_std.json) on the int16 wav, then
    U2Model.decode; every decoding result must equal golden.json."""
    audio, _ = soundfile.read(str(WAV), dtype="int16", always_2d=True)
    report = {}
    cwd = os.getcwd()
    try:
        for name in names:
            folder = out_dir / name
            os.chdir(folder)  # the yaml paths are relative to the model folder, as in a released model
            config = CfgNode(new_allowed=True)
            config.merge_from_file("conf/model.yaml")
            dec = CfgNode(new_allowed=True)
            dec.merge_from_file("conf/decode.yaml")
            tf = TextFeaturizer(unit_type=config.unit_type, vocab=config.vocab_filepath,
                                spm_model_prefix=config.spm_model_prefix)
            with UpdateConfig(config):
                config.input_dim = config.feat_dim
                config.output_dim = tf.vocab_size
            model = U2Model.from_config(config)
            model.eval()
            model.set_state_dict(paddle.load(f"exp/{name}/checkpoints/avg_1.pdparams"))
            feat = Transformation(config.preprocess_config)(audio[:, 0], train=False)
            golden = json.loads(Path("golden.json").read_text(encoding="utf-8"))
            head = np.load(out_dir / "input.npz")["feats_cmvn_head"]
            xs = paddle.to_tensor(feat, dtype="float32").unsqueeze(0)
            ilen = paddle.to_tensor([feat.shape[0]])
            checked = 0
            for mode, spec in golden["modes"].items():
                for method in ("ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"):
                    texts, _ = model.decode(
                        xs, ilen, text_feature=tf, decoding_method=method, beam_size=dec.beam_size,
                        ctc_weight=dec.ctc_weight, reverse_weight=getattr(dec, "reverse_weight", 0.0),
                        decoding_chunk_size=spec["decoding_chunk_size"],
                        num_decoding_left_chunks=spec["num_decoding_left_chunks"],
                        simulate_streaming=spec["simulate_streaming"],
                    )
                    want = spec["results"][method]["text"]
                    assert texts[0] == want, (name, mode, method, texts[0], want)
                    checked += 1
            report[name] = {
                "decodes_checked": checked,
                "max_abs_diff_pipeline_feats_vs_feats_cmvn_head": float(np.abs(feat[:32] - head).max()),
            }
    finally:
        os.chdir(cwd)
    return report


NOTES = [
    "CMVN (data pipeline, paddlespeech.audio.transform.cmvn.GlobalCMVN, float64 numpy): mean = mean_stat/frame_num; "
    "var = var_stat/frame_num - mean**2; std = max(sqrt(var), 1e-20); x = (x - mean) / std (a division, not "
    "multiplication by istd); the result is cast to float32 when the batch is made.",
    "Encoder/decoder LayerNorms (norm_ff, norm_mha, norm_ff_macaron, norm_conv, norm_final, after_norm, decoder "
    "norm1/2/3, decoder after_norm) use epsilon 1e-12; the conv module's LayerNorm (cnn_module_norm layer_norm) "
    "uses 1e-5; BatchNorm1D epsilon 1e-5, momentum 0.9.",
    "Conv2dSubsampling4: conv(1->d,3,stride 2)+ReLU, conv(d->d,3,stride 2)+ReLU, then transpose to [B,T,C,F] and "
    "flatten C-major (index c*F'+f) into Linear(d*F', d) with F' = ((80-1)//2-1)//2 = 19; no dropout there; "
    "mask = mask[:, :, :-2:2][:, :, :-2:2]; T' = ((T-1)//2-1)//2; right_context 6, subsampling 4. Encoder lengths "
    "come from that mask slicing: for an utterance of L frames padded to T, len = ceil(ceil(L/2)/2) (capped by T'), "
    "which is 1 or 2 frames MORE than the ((L-1)//2-1)//2 frames computed from real input (L % 4 in {0,3}: +1; "
    "{1,2}: +2); those extra frames see padded input and count in the CTC loss and the decoder memory mask.",
    "RelPositionalEncoding: x * sqrt(d) (xscale), pos_emb = pe[:, offset:offset+T'] (absolute sinusoid, "
    "pe[:, 2i] = sin(pos*exp(-2i*ln(10000)/d)), pe[:, 2i+1] = cos(...), computed in float32 by paddle: differs from "
    "a float64 table by <= 1.3e-6 for positions < 105, 7e-5 at 5000; max_len 5000). xscale is a float32 tensor. "
    "Dropout on both (off in eval).",
    "RelPositionMultiHeadedAttention: rel_shift is NOT applied: scores = ((q+pos_bias_u) k^T + (q+pos_bias_v) "
    "(linear_pos(pos_emb))^T) / sqrt(d_k), where pos_emb rows are the ABSOLUTE positions of the keys; linear_pos has "
    "no bias; masked scores -> -inf, softmax, then masked probabilities set to 0.0.",
    "forward_chunk: pos_emb = pe[offset - cache_t1 : offset - cache_t1 + cache_t1 + chunk] (cache_t1 = cached frames), "
    "i.e. absolute key positions; no attention mask at all inside a chunk step (queries see all cached + current "
    "frames); att_cache is [layers, heads, cache_t, 2*d_k] = concat(k, v, axis=-1) per head (split in half along the "
    "last axis: first d_k = key, second d_k = value), trimmed to the last required_cache_size = chunk*left frames "
    "(all frames when left < 0); cnn_cache is [layers, 1, d, kernel-1], the last kernel-1 frames of the conv "
    "module's (padded/cached) INPUT in NCL layout, i.e. after the layer's norm_conv LayerNorm and before "
    "pointwise_conv1/GLU; the first chunk left-pads with kernel-1 zeros. Chunk inputs are never masked.",
    "forward_chunk_by_chunk: window = (chunk-1)*4 + 7 input frames, stride = 4*chunk, loop cur in range(0, T - 7 + 1, "
    "stride), last window truncated to the end of the input; output is concatenated (T' frames in total); offset "
    "grows by each chunk's output length.",
    "Masked (simulate_streaming False) chunk decoding uses subsequent_chunk_mask(T', chunk, left): row i sees "
    "[max(0,(i//chunk-left)*chunk), min(T', (i//chunk+1)*chunk)) (left < 0: from 0); the conv module is not "
    "chunk-limited there, so with causal=True it equals the streaming path up to float noise.",
    "Training forward of a use_dynamic_chunk model ALWAYS uses a random chunk (decoding_chunk_size=0 default), even "
    "in eval mode: chunk_size = paddle.randint(1, T'); if > T'//2 full context else chunk_size % 25 + 1. The drawn "
    "values are recorded in loss.*.dynamic_chunk_mask_drawn (paddle.seed(seed) set before each call); "
    "*_full_context entries are the same batches with use_dynamic_chunk=False.",
    "ConvolutionModule: pointwise_conv1 (d->2d, k=1) -> GLU(axis=channels: first half * sigmoid(second half)) -> "
    "depthwise conv (k, groups=d; padding (k-1)/2 if not causal, left pad k-1 if causal) -> norm -> activation -> "
    "pointwise_conv2; padded frames are zeroed (mask_pad) before pointwise_conv1 and after pointwise_conv2. "
    "BatchNorm in eval uses _mean/_variance: (x-mean)/sqrt(var+1e-5)*w+b.",
    "Conformer layer (normalize_before): x += 0.5*FF_macaron(LN(x)); x += MHSA(LN(x)); x += Conv(LN(x)); "
    "x += 0.5*FF(LN(x)); x = LN_final(x); after the last layer encoder.after_norm (eps 1e-12). FFN = w_2(act(w_1(x))) "
    "with swish for the encoder, ReLU for the decoder.",
    "Decoder: Embedding (no padding_idx) * sqrt(d) + absolute pe; tgt_mask = non_pad(ys_in_lens)[:,None,:] & tril; "
    "memory_mask = encoder mask [B,1,T']; pre-norm layers self-attn, src-attn, FFN; after_norm; output_layer.",
    "add_sos_eos: ys_in = [sos] + ys with padding (ignore_id -1) replaced by eos; ys_out = ys + [eos] with padding "
    "kept as ignore_id -1. So decoder INPUT padding is eos, TARGET padding is ignore_id.",
    "LabelSmoothingLoss: KL divergence (nn.KLDivLoss, reduction none) between log_softmax(x) and the smoothed "
    "distribution (confidence 1-lsm on the target, lsm/(V-1) elsewhere), i.e. it includes the constant "
    "sum(t*log t) entropy term (it is NOT plain smoothed cross-entropy); summed over non-ignored positions and "
    "divided by the batch size B (length_normalized_loss false) or by the number of tokens (true).",
    "CTC loss: paddle.nn.CTCLoss(blank=0, reduction='sum') on logits (ctc_lo(dropout(encoder_out)), softmax applied "
    "inside warpctc) with encoder_out_lens from the subsampled mask, then divided by the batch size B "
    "(batch_average). Total = ctc_weight*loss_ctc + (1-ctc_weight)*loss_att.",
    "ctc_greedy_search: argmax per frame (topk(1)), padded frames set to eos, then collapse repeats and drop blank.",
    "ctc_prefix_beam_search: per frame only the topk(beam_size) tokens are expanded; hyps are (pb, pnb) in log "
    "domain combined with log_add (max + log(sum(exp))), in python floats; pruned with python sorted(..., "
    "reverse=True) by log_add(pb, pnb) (stable: ties keep insertion order) to beam_size; the n-best list keeps "
    "beam_size entries (attention_rescoring asserts len(hyps) == beam_size).",
    "attention (U2BaseModel.recognize): beam over batch*beam rows, initial scores [0, -inf, ...]; each step "
    "topk(beam) per row, finished rows (last token eos) contribute one candidate with +0 and are extended with eos; "
    "top beam of beam*beam candidates; stop when all beams end with eos (checked before each step) or after "
    "T' (encoder length) steps; best = argmax of accumulated log-prob (no length normalisation); the returned ids "
    "include the trailing eos token(s) (token_ids_raw; decode()'s token ids are the raw ones, text stops at eos). "
    "The decoder layer cache (forward_one_step) is NOT re-ordered when the beams are re-ordered, so layers >= 2 "
    "attend to keys of whatever row previously sat at that index; attention_textbook_no_cache_reuse reports the "
    "result without cache reuse and whether it differs.",
    "attention_rescoring: decoder input per hyp = sos + hyp (empty hyp -> sos, blank with length 1), pad -> eos; "
    "score = sum_j log p(hyp_j | <j) + log p(eos | hyp) + ctc_weight * ctc_prefix_score; first maximum wins "
    "(strict >). U2Model.decode() for ctc_prefix_beam_search / attention_rescoring requires batch 1 "
    "(sys.exit otherwise); forward_attention_decoder uses an all-ones encoder mask.",
    "TextFeaturizer/load_dict: each vocab line is cut with entry[:-1] (so the file must end with a newline) and "
    "split on ' ' (first field); <blank> inserted at 0 if missing, <eos> appended if missing; sos = eos = V-1; "
    "defeaturize stops at the first eos.",
]


U2PP_NOTES = [
    "U2++ (decoder: bitransformer, BiTransformerDecoder): decoder.left_decoder and decoder.right_decoder are two "
    "TransformerDecoders (own embedding, positional encoding, output layer) of num_blocks and r_num_blocks blocks. "
    "Training: r_ys = the transcript reversed within its length (reverse_pad_list), add_sos_eos as for the left "
    "one, the right decoder runs with the same ys_in_lens and masks; loss_att = (1 - reverse_weight) * l2r + "
    "reverse_weight * r2l (each LabelSmoothingLoss); model_conf.reverse_weight must lie in (0, 1).",
    "U2++ attention_rescoring: forward_attention_decoder(hyps, hyps_lens, encoder_out, reverse_weight) feeds the "
    "right decoder st_reverse_pad_list(hyps[:, 1:], hyps_lens - 1, sos, eos) = <sos> + reversed hyp, <eos>-padded; "
    "score = (1 - reverse_weight) * l2r + reverse_weight * r2l, r2l = sum_j r[len-1-j, hyp_j] + r[len, eos], in "
    "Python floats over float32 numpy values, then + ctc_weight * ctc_score. The attention method (recognize) and "
    "forward_one_step use the left decoder only.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "paddlespeech")
    ap.add_argument("--seed", type=int, default=20240)
    ap.add_argument("--min-gap", type=float, default=1e-3)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    args.out = args.out.resolve()

    assert paddlespeech.__version__ == "1.5.0", paddlespeech.__version__
    assert paddle.__version__ == "3.0.0", paddle.__version__
    for stub in ("paddlespeech_ctcdecoders", "resampy", "librosa"):
        assert getattr(sys.modules[stub], "__stub__", False), f"{stub} should be the stub"

    samples, sr = soundfile.read(str(WAV), dtype="int16")
    assert sr == 16000 and samples.ndim == 1
    feats = compute_fbank(samples)
    ps_feats = paddlespeech_fbank(samples)
    assert ps_feats.shape == feats.shape
    f64 = feats.astype(np.float64)
    mean_std = {
        "mean_stat": f64.sum(axis=0).tolist(),
        "var_stat": (f64 * f64).sum(axis=0).tolist(),
        "frame_num": int(feats.shape[0]),
    }
    cmvn = PipelineGlobalCMVN(mean_std, norm_means=True, norm_vars=True, std_floor=STD_FLOOR)
    feats_cmvn = np.asarray(cmvn(feats), dtype=np.float64).astype(np.float32)
    # the documented recipe reproduces it bit for bit
    mean = np.array(mean_std["mean_stat"]) / mean_std["frame_num"]
    var = np.array(mean_std["var_stat"]) / mean_std["frame_num"] - mean**2
    recipe = ((feats - mean) / np.maximum(np.sqrt(var), STD_FLOOR)).astype(np.float32)
    assert np.array_equal(recipe, feats_cmvn)

    def cmvn_fn(x):
        return np.asarray(cmvn(x), dtype=np.float64).astype(np.float32)

    versions = {
        "paddlespeech": paddlespeech.__version__,
        "paddlepaddle": paddle.__version__,
        "numpy": np.__version__,
        "kaldi_native_fbank": metadata.version("kaldi_native_fbank"),
        "python": sys.version.split()[0],
    }
    meta = {
        "versions": versions,
        "features": {
            "wav": str(WAV.relative_to(REPO)),
            "num_samples": int(samples.shape[0]),
            "waveform_scale": "int16 sample values as float32 (soundfile dtype=int16), i.e. [-32768, 32767]",
            "fbank": "kaldi_native_fbank 80 bins, 25 ms / 10 ms, dither 0, snip_edges, povey, preemph 0.97, "
                     "remove_dc_offset, power spectrum, low_freq 20, high_freq 0 (Nyquist), energy_floor 0, "
                     "use_energy false, natural log",
            "num_frames": int(feats.shape[0]),
            "max_abs_diff_vs_paddlespeech_compliance_kaldi_fbank": float(np.abs(ps_feats - feats).max()),
            "mean_std_json": "data/mean_std.json computed from this utterance's frames (float64 sums)",
            "feats_cmvn_recipe": "((feats.astype(float64) - mean) / max(sqrt(var), 1e-20)).astype(float32), mean = "
                                 "mean_stat/frame_num, var = var_stat/frame_num - mean**2",
            "feats_cmvn_sha256": _sha256(feats_cmvn),
            "feats_sha256": _sha256(feats),
        },
        "notes": NOTES,
    }
    vocab = build_vocab()
    args.out.mkdir(parents=True, exist_ok=True)
    # Shared by both models (same utterance, same mean_std.json): stored once to keep the fixtures small.
    save_npz(args.out / "input.npz", {"feats": feats, "feats_cmvn_head": feats_cmvn[:32]})
    summary = {}
    for name in args.models:
        folder, golden = make_model_fixture(
            name, args.out, vocab, feats, feats_cmvn, mean_std, cmvn_fn, args.seed, args.min_gap, meta
        )
        summary[name] = {
            "seed": golden["seed"],
            "results": {
                mode: {m: r["text"] for m, r in v["results"].items()} for mode, v in golden["modes"].items()
            },
            "margins": {mode: v["margins"] for mode, v in golden["modes"].items()},
            "loss": {k: v for k, v in golden["loss"].items() if k.startswith("batch")},
            "chunk": {k: v["max_abs_diff_chunk_by_chunk_vs_masked"] for k, v in golden["chunk_encoder"].items()},
        }
        print(f"wrote {folder}")
    summary["verification_with_paddlespeech_pipeline"] = verify_with_paddlespeech_pipeline(args.out, args.models)
    print(json.dumps(_py(summary), ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
