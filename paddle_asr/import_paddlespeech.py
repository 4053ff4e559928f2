"""`paddle-asr import-paddlespeech`: turn a PaddleSpeech U2 (asr1) or DeepSpeech2 (asr0) experiment
or released model folder into an experiment directory of ours (resolved `train.yaml`, checkpoint,
units, CMVN), after which the later stages run on it unchanged.

What is read (PaddleSpeech layout, examples/aishell/asr1 and asr0):
  - the model config: `model.yaml` (released models) or `conf/<name>.yaml` (experiments); a config
    with `num_rnn_layers` is DeepSpeech2 (asr0's flat layout), one with `encoder` is U2;
  - the weights: `exp/<name>/checkpoints/avg_<N>.pdparams` (or any one `.pdparams`);
  - the units: `vocab_filepath` of the config, else the one `vocab.txt` in the folder;
  - the CMVN: `cmvn_file` of the config (then it is inside the model already), else the
    `cmvn_json` step of `preprocess_config` (`data/mean_std.json`) - PaddleSpeech applies it in the
    data pipeline; here it becomes the model's `encoder.global_cmvn`, as our models carry CMVN inside.
Parameter names are PaddleSpeech's, so the state dict loads without renaming; every tensor is
checked against the model built from the converted config before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import yaml

from paddle_asr.artifacts import atomic_directory, atomic_write_text
from paddle_asr.config import AsrConfig, DecoderConfig, DeepSpeech2Config, EncoderConfig, check_config, save_config
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.errors import AsrError
from paddle_asr.features import load_cmvn
from paddle_asr.models.registry import build_model, check_state_dict

# PaddleSpeech encoder_conf keys that only ever take one value in our models: accepted when they do.
_FIXED_ENCODER_KEYS = {"macaron_style": True, "concat_after": False, "positionwise_conv_kernel_size": 1,
                       "max_len": 5000}
_FIXED_DECODER_KEYS = {"concat_after": False, "input_layer": "embed", "use_output_layer": True, "max_len": 5000}
# model_conf keys that only matter to PaddleSpeech's own trainer.
_TRAINING_ONLY_MODEL_KEYS = {"init_type"}
_DECODER_TYPES = ("transformer", "bitransformer")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise AsrError(f"cannot read PaddleSpeech config {path}: {e}") from None
    if not isinstance(data, dict):
        raise AsrError(f"{path} is not a PaddleSpeech config (a YAML mapping)")
    return data


def is_deepspeech2(ps: dict) -> bool:
    """asr0 configs name the RNN stack at the top level; asr1 (U2) configs have an `encoder`."""
    return "num_rnn_layers" in ps and "encoder" not in ps


def find_model_config(folder: Path) -> Path:
    """`model.yaml`, else the one `conf/*.yaml` that defines a network (U2 `encoder` or DeepSpeech2
    `num_rnn_layers`)."""
    if (folder / "model.yaml").is_file():
        return folder / "model.yaml"
    candidates = [p for p in sorted(folder.glob("conf/*.yaml"))
                  if {"encoder", "num_rnn_layers"} & set(_read_yaml(p))]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise AsrError(f"{folder} has no PaddleSpeech model config (model.yaml or conf/<name>.yaml with an 'encoder:' "
                       "or 'num_rnn_layers:' key); pass --config")
    raise AsrError(f"{folder} has several model configs ({', '.join(p.name for p in candidates)}); pass --config")


def find_checkpoint(folder: Path) -> Path:
    found = sorted(folder.rglob("*.pdparams"))
    averaged = [p for p in found if p.name.startswith("avg_")]
    if len(averaged) == 1:
        return averaged[0]
    if len(found) == 1:
        return found[0]
    if not found:
        raise AsrError(f"{folder} has no .pdparams checkpoint; pass --checkpoint")
    raise AsrError(f"{folder} has several checkpoints ({', '.join(str(p.relative_to(folder)) for p in found[:8])}); "
                   "pass --checkpoint")


def _resolve(folder: Path, value: str | None, pattern: str, what: str) -> Path:
    """A path named by the config (relative to the experiment root), else the one file matching `pattern`."""
    if value:
        for base in (folder, folder.parent):
            if (base / value).is_file():
                return base / value
    found = sorted(folder.rglob(pattern))
    if len(found) == 1:
        return found[0]
    named = f" (the config names '{value}')" if value else ""
    raise AsrError(f"cannot find the {what} in {folder}{named}: {len(found)} files match {pattern}")


def _convert_section(raw: dict, cls: type, fixed: dict, where: str, source: Path) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key in names:
            kwargs[key] = value
        elif key in fixed:
            if value != fixed[key]:
                raise AsrError(f"{source}: {where}.{key}: {value!r} is not supported (only {fixed[key]!r})")
        else:
            raise AsrError(f"{source}: {where}.{key} is not a setting this project knows; "
                           f"supported: {', '.join(sorted(names | set(fixed)))}")
    return cls(**kwargs)


def _preprocess_steps(folder: Path, ps: dict) -> list[dict]:
    path = ps.get("preprocess_config")
    if not path:
        return []
    conf = _read_yaml(_resolve(folder, path, "preprocess*.yaml", "preprocess config"))
    return list(conf.get("process", []))


def _convert_features(folder: Path, ps: dict, config: AsrConfig):
    """The `fbank_kaldi` step of preprocess.yaml (else the config's feat_dim/window_ms/stride_ms)."""
    fbank = next((s for s in _preprocess_steps(folder, ps) if s.get("type") == "fbank_kaldi"), {})
    rate = int(fbank.get("fs", 16000))
    return dataclasses.replace(
        config.features, sample_rate=rate, num_mel_bins=int(fbank.get("n_mels", ps.get("feat_dim", 80))),
        frame_length_ms=(float(fbank["win_length"]) * 1000 / rate if "win_length" in fbank
                         else float(ps.get("window_ms", 25.0))),
        frame_shift_ms=(float(fbank["n_shift"]) * 1000 / rate if "n_shift" in fbank
                        else float(ps.get("stride_ms", 10.0))),
        dither=float(fbank.get("dither", 0.1)))


def _fc_sizes(value: Any, count: int, source: Path) -> list[int]:
    """asr0 writes `fc_layers_size_list: -1,` (the string "-1,") when there are no FC layers."""
    if count == 0:
        return []
    items = value if isinstance(value, list) else str(value).replace(" ", "").strip(",").split(",")
    try:
        sizes = [int(v) for v in items]
    except ValueError:
        raise AsrError(f"{source}: fc_layers_size_list {value!r} is not a list of sizes") from None
    if len(sizes) < count or min(sizes[:count]) < 1:
        raise AsrError(f"{source}: fc_layers_size_list {value!r} needs {count} positive sizes (num_fc_layers)")
    return sizes[:count]


def convert_deepspeech2_config(folder: Path, ps: dict, source: Path, vocab_size: int) -> AsrConfig:
    """PaddleSpeech asr0 config (flat layout, fbank features) -> our AsrConfig with model.name deepspeech2."""
    if ps.get("spectrum_type", "fbank") != "fbank" or not any(
            s.get("type") == "fbank_kaldi" for s in _preprocess_steps(folder, ps)):
        raise AsrError(f"{source}: only fbank DeepSpeech2 models are supported (preprocess_config with an "
                       "fbank_kaldi step); the legacy linear-spectrogram models (<= v2.2) are not")
    if ps.get("share_rnn_weights", False):
        raise AsrError(f"{source}: share_rnn_weights: True is not supported")
    defaults = DeepSpeech2Config()
    num_fc = int(ps.get("num_fc_layers", defaults.num_fc_layers))
    grad_norm = ps.get("ctc_grad_norm_type")
    if grad_norm in ("batch", "frame"):
        grad_norm = None  # PaddleSpeech 1.5 on Paddle 3 drops these (nn.CTCLoss has no such arguments)
    ds2 = DeepSpeech2Config(
        num_conv_layers=int(ps.get("num_conv_layers", defaults.num_conv_layers)),
        num_rnn_layers=int(ps["num_rnn_layers"]),
        rnn_layer_size=int(ps.get("rnn_layer_size", defaults.rnn_layer_size)),
        # PaddleSpeech's own default is forward; every asr0 config names it.
        rnn_direction=str(ps.get("rnn_direction", "forward")),
        use_gru=bool(ps.get("use_gru", defaults.use_gru)),
        num_fc_layers=num_fc,
        fc_layers_size_list=_fc_sizes(ps.get("fc_layers_size_list"), num_fc, source),
        blank_id=int(ps.get("blank_id", defaults.blank_id)),
        ctc_grad_norm_type=grad_norm)
    config = AsrConfig()
    config.model = dataclasses.replace(config.model, name="deepspeech2", deepspeech2=ds2)
    config.features = _convert_features(folder, ps, config)
    # asr0 training: Adam + L2 weight decay, lr x lr_decay after every epoch, global-norm clipping.
    config.optim = dataclasses.replace(config.optim, name="adam", lr=float(ps.get("lr", 5e-4)),
                                       weight_decay=float(ps.get("weight_decay", 1e-6)),
                                       grad_clip=float(ps.get("global_grad_clip", 3.0)))
    config.scheduler = dataclasses.replace(config.scheduler, name="exponential", gamma=float(ps.get("lr_decay", 0.93)))
    config.training = dataclasses.replace(config.training, max_epoch=int(ps.get("n_epoch", 50)),
                                          batch_size=int(ps.get("batch_size", 64)),
                                          accum_grad=int(ps.get("accum_grad", 1)),
                                          max_duration_s=float(ps.get("max_input_len", config.training.max_duration_s)),
                                          average_num=1)
    return dataclasses.replace(config, vocab_size=vocab_size, input_dim=config.features.num_mel_bins)


def _convert_decoder(ps: dict, model_conf: dict, source: Path) -> DecoderConfig:
    """`decoder` + `decoder_conf` (+ model_conf.reverse_weight) -> our DecoderConfig. U2++ configs
    (`decoder: bitransformer`) name r_num_blocks and reverse_weight; PaddleSpeech drops both for a
    transformer decoder (its WenetSpeech chunk_conformer.yaml keeps reverse_weight: 0.0), and so do we."""
    kind = ps.get("decoder", "transformer")
    if kind not in _DECODER_TYPES:
        raise AsrError(f"{source}: decoder '{kind}' is not supported (only {' and '.join(_DECODER_TYPES)})")
    raw = dict(ps.get("decoder_conf", {}))
    if kind == "transformer":
        raw.pop("r_num_blocks", None)
    else:
        raw.update(type=kind, reverse_weight=float(model_conf.get("reverse_weight", 0.0)))
    return _convert_section(raw, DecoderConfig, _FIXED_DECODER_KEYS, "decoder_conf", source)


def convert_config(folder: Path, ps: dict, source: Path, vocab_size: int) -> AsrConfig:
    """PaddleSpeech training config -> our AsrConfig (model, features, optimiser and schedule)."""
    encoder = _convert_section(dict(ps.get("encoder_conf", {})), EncoderConfig, _FIXED_ENCODER_KEYS,
                               "encoder_conf", source)
    encoder = dataclasses.replace(encoder, subsampling_channels=None)
    if ps.get("encoder") == "transformer" and "pos_enc_layer_type" not in ps.get("encoder_conf", {}):
        # PaddleSpeech's TransformerEncoder defaults to absolute positions.
        encoder = dataclasses.replace(encoder, pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn",
                                      use_cnn_module=False)
    model_conf = dict(ps.get("model_conf", {}))
    decoder = _convert_decoder(ps, model_conf, source)
    unknown = set(model_conf) - {"ctc_weight", "lsm_weight", "length_normalized_loss", "ctc_dropoutrate",
                                 "ctc_grad_norm_type", "reverse_weight"} - _TRAINING_ONLY_MODEL_KEYS
    if unknown:
        raise AsrError(f"{source}: model_conf keys {sorted(unknown)} are not supported")
    config = AsrConfig()
    config.model = dataclasses.replace(
        config.model, name="u2", encoder_type=ps.get("encoder", "conformer"), encoder=encoder, decoder=decoder,
        ctc_weight=float(model_conf.get("ctc_weight", 0.3)), lsm_weight=float(model_conf.get("lsm_weight", 0.1)),
        length_normalized_loss=bool(model_conf.get("length_normalized_loss", False)),
        ctc_dropout_rate=float(model_conf.get("ctc_dropoutrate", 0.0)))
    config.features = _convert_features(folder, ps, config)
    optim = dict(ps.get("optim_conf", {}))
    config.optim = dataclasses.replace(config.optim, name=ps.get("optim", "adam"), lr=float(optim.get("lr", 0.002)),
                                       weight_decay=float(optim.get("weight_decay", 1e-6)),
                                       grad_clip=float(ps.get("global_grad_clip", 5.0)))
    warmup_steps = int(ps.get("scheduler_conf", {}).get("warmup_steps", 25000))
    config.scheduler = dataclasses.replace(config.scheduler, warmup_steps=warmup_steps)
    config.training = dataclasses.replace(config.training, max_epoch=int(ps.get("n_epoch", 150)),
                                          batch_size=int(ps.get("batch_size", 32)),
                                          accum_grad=int(ps.get("accum_grad", 1)),
                                          average_num=1)
    return dataclasses.replace(config, vocab_size=vocab_size, input_dim=config.features.num_mel_bins)


def import_paddlespeech(folder: Path, exp_dir: Path, *, config_path: Path | None = None,
                        checkpoint: Path | None = None, log=print) -> Path:
    """Write `exp_dir/{train.yaml, vocab.txt, global_cmvn, checkpoints/avg_1.pdparams, imported.json}`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AsrError(f"{folder} is not a directory; pass a PaddleSpeech experiment or released model folder")
    source = Path(config_path) if config_path else find_model_config(folder)
    ps = _read_yaml(source)
    ckpt = Path(checkpoint) if checkpoint else find_checkpoint(folder)
    vocab = _resolve(folder, ps.get("vocab_filepath"), "vocab.txt", "unit list (vocab.txt)")
    tokenizer = CharTokenizer.from_file(vocab)
    convert = convert_deepspeech2_config if is_deepspeech2(ps) else convert_config
    config = convert(folder, ps, source, tokenizer.vocab_size)

    try:
        state = paddle.load(str(ckpt))
    except Exception as e:  # paddle raises several types for corrupt files
        raise AsrError(f"cannot read checkpoint {ckpt} ({type(e).__name__}: {e})") from None
    if "encoder.global_cmvn.mean" in state:
        cmvn_source, cmvn = "the checkpoint (cmvn_file)", None
    else:
        steps = [s for s in _preprocess_steps(folder, ps) if s.get("type") == "cmvn_json"]
        cmvn_path = _resolve(folder, steps[0].get("cmvn_path") if steps else ps.get("cmvn_file"), "mean_std.json",
                             "CMVN statistics (mean_std.json)")
        cmvn, cmvn_source = load_cmvn(cmvn_path), str(cmvn_path)
        state = dict(state)
        state["encoder.global_cmvn.mean"] = paddle.to_tensor(cmvn[0])
        state["encoder.global_cmvn.istd"] = paddle.to_tensor(cmvn[1])
    check_config(config, source)  # PaddleSpeech's values, against what ours allow
    model = build_model(config)
    check_state_dict(model, state, f"{ckpt} (converted from {source})")

    exp_dir = Path(exp_dir)
    with atomic_directory(exp_dir) as tmp:
        (tmp / "checkpoints").mkdir()
        shutil.copyfile(vocab, tmp / "vocab.txt")
        mean, istd = (np.asarray(state["encoder.global_cmvn.mean"]), np.asarray(state["encoder.global_cmvn.istd"]))
        # Our CMVN file format is statistics; from mean/istd write an equivalent one-frame form.
        stats = {"mean_stat": mean.astype(float).tolist(),
                 "var_stat": (mean * mean + 1.0 / (istd * istd)).astype(float).tolist(), "frame_num": 1}
        atomic_write_text(tmp / "global_cmvn", json.dumps(stats))
        # The data paths of the resolved config are relative to the recipe directory stages run in.
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, vocab=str(exp_dir / "vocab.txt"), cmvn=str(exp_dir / "global_cmvn")))
        save_config(config, tmp / "train.yaml")
        paddle.save({k: (v if isinstance(v, paddle.Tensor) else paddle.to_tensor(v)) for k, v in state.items()},
                    str(tmp / "checkpoints" / "avg_1.pdparams"))
        atomic_write_text(tmp / "imported.json", json.dumps({
            "from": str(folder.resolve()), "config": str(source), "checkpoint": str(ckpt), "vocab": str(vocab),
            "cmvn": cmvn_source, "tensors": len(state)}, indent=1))
    what = (f"DeepSpeech2 ({config.model.deepspeech2.rnn_direction})" if config.model.name == "deepspeech2"
            else f"{config.model.encoder_type} U2{'++' if config.model.decoder.type == 'bitransformer' else ''}")
    log(f"import-paddlespeech: {what} model ({len(state)} tensors, {tokenizer.vocab_size} units) "
        f"from {ckpt}; CMVN from {cmvn_source} -> {exp_dir} (run stages 3-7 with --exp_name {exp_dir.name})")
    return exp_dir
