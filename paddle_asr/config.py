"""Strict YAML configuration: typed sections, unknown keys are errors, `base:` files are merged.

A recipe's config names a base file (`base: conformer.yaml`) and overrides only
what differs. After merging, every key is checked against the dataclasses below, so a typo such as
`lerning_rate` stops the run with the file and key path instead of being silently ignored.
The training stage writes the fully resolved config to `exp/<name>/train.yaml`; every later stage
reads only that file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from paddle_asr.errors import AsrError


@dataclass
class FeatureConfig:
    """Kaldi-compatible log-mel filterbank (REFERENCE §3.1)."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.1  # training only; decoding and CMVN statistics always use 0


@dataclass
class SpecAugmentConfig:
    """WeNet-style masks on the un-normalised fbank (CMVN is inside the model)."""

    enabled: bool = True
    num_t_mask: int = 2
    max_t: int = 50
    num_f_mask: int = 2
    max_f: int = 10
    # Time warp window in frames (PaddleSpeech max_time_warp 5); 0 = off, as WeNet.
    max_w: int = 0
    fill: str = "zero"  # masks hold zero (WeNet) or each bin's utterance mean ("mean"; DeepSpeech2)


@dataclass
class SpeedPerturbConfig:
    """WeNet's speed perturbation: each training utterance is resampled by a factor drawn uniformly
    from `speeds` (pitch and tempo change together), before fbank."""

    enabled: bool = False
    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])


@dataclass
class EncoderConfig:
    """PaddleSpeech/WeNet `encoder_conf`; names kept so their YAML maps key for key."""

    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 12
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    input_layer: str = "conv2d"  # conv2d (x4), conv2d6 (x6), conv2d8 (x8)
    # Channels of the subsampling convolutions; None means output_size, PaddleSpeech's layout.
    subsampling_channels: int | None = None
    normalize_before: bool = True
    pos_enc_layer_type: str = "rel_pos"  # rel_pos (Conformer) | abs_pos (Transformer)
    selfattention_layer_type: str = "rel_selfattn"  # rel_selfattn | selfattn; must agree with pos_enc_layer_type
    cnn_module_kernel: int = 15
    use_cnn_module: bool = True
    activation_type: str = "swish"
    cnn_module_norm: str = "batch_norm"  # batch_norm | layer_norm
    # Streaming (U2): causal convolution and chunk-masked self-attention.
    causal: bool = False
    use_dynamic_chunk: bool = False  # train with a random chunk size per batch (1-25 frames or full)
    use_dynamic_left_chunk: bool = False  # ... and a random number of visible left chunks
    static_chunk_size: int = 0  # >0: always train and decode with this chunk size
    layer_norm_epsilon: float = 1e-12  # PaddleSpeech's value (WeNet uses 1e-5)


@dataclass
class DecoderConfig:
    """Transformer attention decoder (PaddleSpeech `decoder_conf`)."""

    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    self_attention_dropout_rate: float = 0.0
    src_attention_dropout_rate: float = 0.0
    normalize_before: bool = True


@dataclass
class DeepSpeech2Config:
    """PaddleSpeech asr0 `DeepSpeech2Model` (REFERENCE §5.4, §8.3); keys as in its YAML, so an asr0
    config maps key for key. Two 3x3 stride-2 convolutions (32 channels), RNN layers each followed
    by LayerNorm, optional ReLU Linear layers, then a CTC output layer."""

    # PaddleSpeech accepts this key but always builds two convolutions; only 2 is accepted here.
    num_conv_layers: int = 2
    num_rnn_layers: int = 5
    rnn_layer_size: int = 1024
    rnn_direction: str = "bidirect"  # bidirect (offline) | forward (online: chunk-by-chunk streaming)
    use_gru: bool = False  # False: LSTM
    num_fc_layers: int = 0  # ReLU Linear layers after the RNN (0 in every published config)
    fc_layers_size_list: list[int] = field(default_factory=list)
    blank_id: int = 0
    # None, or "instance": warpctc divides each utterance's CTC gradient by its frame count (the
    # legacy v2.2 recipes); the loss value is the batch sum / batch size either way.
    ctc_grad_norm_type: str | None = None


@dataclass
class ModelConfig:
    """`name` picks the network. u2: encoder + CTC + attention decoder, trained with
    ctc_weight*CTC + (1-ctc_weight)*attention (every key below but `deepspeech2`).
    deepspeech2: conv + RNN + CTC, configured by the `deepspeech2` section alone."""

    name: str = "u2"  # u2 | deepspeech2
    encoder_type: str = "conformer"  # conformer | transformer
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    ctc_weight: float = 0.3
    lsm_weight: float = 0.1  # label smoothing of the attention loss
    length_normalized_loss: bool = False  # False: the attention loss is divided by the batch size
    ctc_dropout_rate: float = 0.0
    deepspeech2: DeepSpeech2Config = field(default_factory=DeepSpeech2Config)


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 0.002
    weight_decay: float = 1e-6  # Paddle's float weight_decay is a coupled L2 coefficient
    grad_clip: float = 5.0


@dataclass
class SchedulerConfig:
    # warmuplr (Noam, per update), exponential (x gamma per epoch, DeepSpeech2),
    # cosine_warm_restarts (per update: cosine from lr to eta_min over t_0 updates, periods x t_mult).
    name: str = "warmuplr"
    warmup_steps: int = 25000
    gamma: float = 0.93  # PaddleSpeech asr0 (REFERENCE §5.4)
    t_0: int = 1000
    t_mult: int = 1
    eta_min: float = 0.0


@dataclass
class TrainingConfig:
    max_epoch: int = 150
    batch_size: int = 32
    accum_grad: int = 1
    # Utterances outside these bounds are filtered before training, counted and reported by id.
    min_duration_s: float = 0.5
    max_duration_s: float = 20.0
    # Token filters (WeNet token_max_length / max_output_input_ratio; 0 = off): tokens per
    # utterance, and tokens per 10 ms feature frame.
    max_tokens: int = 0
    max_output_input_ratio: float = 0.0
    # > 0: dynamic batches of at most this many padded feature frames (batch_size is then ignored).
    max_frames_in_batch: int = 0
    num_workers: int = 0  # data-loading processes (0: load in the training process)
    log_interval: int = 50
    seed: int = 1
    num_threads: int = 0  # 0: all cores
    average_num: int = 30
    average_mode: str = "best"  # best (lowest dev loss) or last (latest epochs)
    # Optimizer updates between mid-epoch checkpoints of the full state (0: end of each epoch only).
    checkpoint_interval: int = 0
    # Epoch checkpoints kept: the best keep_checkpoints by dev loss plus the latest (0: all).
    keep_checkpoints: int = 0
    amp: str = "off"  # off, fp16 (with a loss scaler) or bf16; GPU only
    # Batches whose loss is NaN or infinite are skipped and counted; more than this many stops
    # training with the ids of the last one (a diverging run, or broken data).
    max_nonfinite_batches: int = 20


@dataclass
class DataConfig:
    """Filled by the training stage; paths are relative to the recipe directory."""

    train: str = "data/train/data.list"
    dev: str = "data/dev/data.list"
    vocab: str = "data/lang_char/vocab.txt"
    cmvn: str = "data/train/global_cmvn"
    # Output units: char (one per character, AISHELL) or bpe (sentencepiece unigram pieces,
    # LibriSpeech). For bpe, stage 0 trains a model of bpe_size pieces on the training text, or
    # copies bpe_model (a trained sentencepiece .model, e.g. WeNet's train_960_unigram5000), to
    # `bpe.model` beside the units file.
    units: str = "char"
    bpe_size: int = 5000
    bpe_model: str = ""
    # A shards.list from stage 0 --shards N: training then reads tar shards sequentially through a
    # shuffle and a sort buffer (for corpora too big to index); `train` still names the manifest.
    train_shards: str = ""
    shuffle_buffer: int = 1500
    sort_buffer: int = 500


@dataclass
class AsrConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    speed_perturb: SpeedPerturbConfig = field(default_factory=SpeedPerturbConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Derived when training starts, never set by hand: checked against the data on every load.
    vocab_size: int | None = None
    input_dim: int | None = None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AsrError(f"config file {path} does not exist; pass an existing YAML file with --config")
    try:
        with path.open(encoding="utf-8") as f:
            loaded = yaml.safe_load(f)  # safe_load: a config file must never run code
    except yaml.YAMLError as e:
        raise AsrError(f"config file {path} is not valid YAML: {e}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise AsrError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and the chain of `base:` files it names, merged (later wins)."""
    path = path.resolve()
    if path in _seen:
        raise AsrError(f"config {path} includes itself through 'base:'")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = (path.parent / str(base)).resolve()
    return _merge(load_raw(base_path, _seen + (path,)), raw)


def _coerce(value: Any, hint: Any, where: str, source: Path) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(a for a in options if a is not type(None))
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise AsrError(f"{source}: '{where}' must be a list, got {value!r}; fix the value")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise AsrError(f"{source}: '{where}' must be a mapping, got {value!r}")
        return _build(hint, value, where, source)
    ok = (
        (hint is bool and isinstance(value, bool))
        or (hint is int and isinstance(value, int) and not isinstance(value, bool))
        or (hint is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (hint is str and isinstance(value, str))
    )
    if not ok:
        raise AsrError(
            f"{source}: '{where}' must be {hint.__name__}, got {value!r} ({type(value).__name__}); fix the value"
        )
    return float(value) if hint is float else value


def _build(cls: type, raw: dict[str, Any], prefix: str, source: Path) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        keys = ", ".join(f"'{prefix + '.' if prefix else ''}{k}'" for k in unknown)
        raise AsrError(
            f"{source}: unknown config key(s) {keys}; allowed here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix + '.' if prefix else ''}{k}", source) for k, v in raw.items()}
    return cls(**kwargs)


def load_config(path: Path) -> AsrConfig:
    """Load and validate a config file (with its `base:` chain)."""
    return _build(AsrConfig, load_raw(Path(path)), "", Path(path))


@dataclass
class DecodeConfig:
    """`conf/decode.yaml`: how stages 3, 5 and 6 decode (PaddleSpeech `decode.yaml`, REFERENCE §5.5)."""

    methods: list[str] = field(default_factory=lambda: [
        "ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"])
    beam_size: int = 10
    ctc_weight: float = 0.5  # weight of the CTC prefix score in attention rescoring
    # -1: full attention over the whole utterance. >0: streaming, the encoder runs chunk by chunk
    # with this many encoder frames per chunk and caches (the model must be trained for it).
    decoding_chunk_size: int = -1
    num_decoding_left_chunks: int = -1  # chunks of history kept in the attention cache; -1: all
    batch_size: int = 16  # utterances per encoder pass (streaming decodes one at a time)
    # Attention beam search runs at most as many steps as the encoder has frames (PaddleSpeech). A
    # ratio r > 0 also caps it at r x (CTC greedy length) + 2 tokens: a decoder that has not learnt
    # to stop otherwise runs every step, and each step re-reads the whole prefix.
    attention_length_ratio: float = 0.0
    # ctc_beam_search_lm: CTC prefix beam search with an n-gram LM (ARPA or KenLM binary), ranking by
    # log P_ctc + alpha * log10 P_lm + beta * length, as PaddleSpeech's DeepSpeech2 decoder.
    lm_path: str = ""  # relative to the recipe directory, e.g. data/lm/char_5gram.arpa
    alpha: float = 2.2
    beta: float = 4.3
    cutoff_prob: float = 1.0  # per frame, expand the fewest tokens covering this probability mass
    cutoff_top_n: int = 0  # and at most this many (0: beam_size)


def load_decode_config(path: Path) -> DecodeConfig:
    """Load and validate a decoding config (`base:` chains allowed)."""
    return _build(DecodeConfig, load_raw(Path(path)), "", Path(path))


def save_decode_config(config: DecodeConfig, path: Path) -> None:
    from paddle_asr.artifacts import atomic_write_text

    text = yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True)
    atomic_write_text(Path(path), text)


def config_to_dict(config: AsrConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: AsrConfig, path: Path) -> None:
    """Write the resolved config atomically, so a killed stage never leaves half a file."""
    from paddle_asr.artifacts import atomic_write_text

    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
    atomic_write_text(Path(path), text)
