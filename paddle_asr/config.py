"""Strict YAML configuration: typed sections, allowed values, unknown keys are errors, `base:` files merged.

Layers. A config names the files it builds on with `base:`, one path or a list of paths. They are
merged in order, a later one winning, and the file's own keys win over all of them; a base may have
bases of its own. A base path is relative to the file that names it, except a path that starts with
`//`, which is relative to the repository's top folder (the one holding `paddle_asr/`), so any file,
wherever it lies, names a shared preset the same way:

    base: [//conf/model/conformer.yaml, schedule.yaml]

The top-level `conf/` holds what recipes share: model presets (`conf/model/*.yaml`, networks only)
and decoding presets (`conf/decode/*.yaml`). A recipe's `conf/` holds what is specific to its corpus
and schedule, on top of a preset.

Checks. After merging, every key is checked against the dataclasses below, so a typo such as
`lerning_rate` stops the run with the file and key path instead of being silently ignored. Each
value is checked against what its field allows: `Literal[...]` lists the choices, `Range` bounds a
number, and `AsrConfig.problems` / `DecodeConfig.problems` check values that depend on each other.
So `amp: fp61` or `beam_size: 0` stops `load_config` with the file and key path before any stage
runs. `check_config` applies the same checks to a config built in code.

The training stage writes the fully resolved config to `exp/<name>/train.yaml`; every later stage
reads only that file.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from paddle_asr.errors import AsrError

REPO_TOP = Path(__file__).resolve().parents[1]
TOP_PREFIX = "//"  # a base path starting with this is relative to REPO_TOP


@dataclass(frozen=True)
class Range:
    """The numbers a field allows: `ge`/`gt` below, `le` above (None: unbounded), and `also`, single
    values with a meaning of their own outside that interval (e.g. -1: "all")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    also: tuple[float, ...] = ()

    def admits(self, value: float) -> bool:
        if value in self.also:
            return True
        # Written so that NaN fails every bound.
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and not (isinstance(value, float) and math.isnan(value)))

    def __str__(self) -> str:
        low = f"{self.ge:g}" if self.ge is not None else f"{self.gt:g}" if self.gt is not None else None
        if low is not None and self.le is not None:
            text = f"in {'[' if self.ge is not None else '('}{low}, {self.le:g}]"
        elif low is not None:
            text = f"{'>=' if self.ge is not None else '>'} {low}"
        else:
            text = f"<= {self.le:g}"
        return " or ".join([*(f"{v:g}" for v in self.also), text])


AT_LEAST_0 = Range(ge=0)
AT_LEAST_1 = Range(ge=1)
POSITIVE = Range(gt=0)
FRACTION = Range(ge=0, le=1)  # weights and dropout rates

DecodeMethod = Literal["ctc_greedy_search", "ctc_prefix_beam_search", "ctc_beam_search_lm", "attention",
                       "attention_rescoring"]
SchedulerName = Literal["warmuplr", "warmup_cosine", "exponential", "cosine_warm_restarts"]
EncoderType = Literal["conformer", "transformer"]
ModelName = Literal["u2", "deepspeech2"]


@dataclass
class FeatureConfig:
    """Kaldi-compatible log-mel filterbank, as WeNet and PaddleSpeech configure it (docs/fbank_cmvn.md)."""

    sample_rate: Annotated[int, POSITIVE] = 16000
    num_mel_bins: Annotated[int, AT_LEAST_1] = 80
    frame_length_ms: Annotated[float, POSITIVE] = 25.0
    frame_shift_ms: Annotated[float, POSITIVE] = 10.0
    dither: Annotated[float, AT_LEAST_0] = 0.1  # training only; decoding and CMVN statistics always use 0
    # Upper edge of the mel banks, Kaldi's `high_freq`: > 0 in Hz, <= 0 an offset from Nyquist. 0 (Nyquist)
    # as WeNet and PaddleSpeech train; -400 is what sherpa-onnx computes for every WeNet model, so a
    # model trained with it reads sherpa-onnx's fbank as it is (docs/onnx.md).
    high_freq: float = 0.0

    def mel_high_hz(self) -> float:
        """The top of the mel banks in Hz: Kaldi's reading of `high_freq`."""
        return self.high_freq if self.high_freq > 0 else self.sample_rate / 2.0 + self.high_freq


@dataclass
class SpecAugmentConfig:
    """WeNet-style masks on the un-normalised fbank (CMVN is inside the model)."""

    enabled: bool = True
    num_t_mask: Annotated[int, AT_LEAST_0] = 2
    max_t: Annotated[int, AT_LEAST_0] = 50
    num_f_mask: Annotated[int, AT_LEAST_0] = 2
    max_f: Annotated[int, AT_LEAST_0] = 10
    # Time warp window in frames (PaddleSpeech max_time_warp 5); 0 = off, as WeNet.
    max_w: Annotated[int, AT_LEAST_0] = 0
    fill: Literal["zero", "mean"] = "zero"  # masks hold zero (WeNet) or each bin's utterance mean (DeepSpeech2)


@dataclass
class SpeedPerturbConfig:
    """WeNet's speed perturbation: each training utterance is resampled by a factor drawn uniformly
    from `speeds` (pitch and tempo change together), before fbank."""

    enabled: bool = False
    speeds: list[Annotated[float, POSITIVE]] = field(default_factory=lambda: [0.9, 1.0, 1.1])


@dataclass
class VoicePerturbConfig:
    """Per-utterance voice perturbation, for models that must read voices training never had. Vocal
    tract length perturbation (VTLP; Jaitly and Hinton, ICML 2013 workshop) warps the mel banks'
    frequencies by a factor drawn uniformly from [min_warp, max_warp], with Kaldi's piecewise-linear
    VTLN warp (`vtln_low` 100 Hz, `vtln_high` 500 Hz below the top bank). A random smooth curve of peak
    gain up to `envelope_db` dB is then added across the mel bins, as another vocal tract's or
    microphone's resonances would shape the spectrum, and `high_cut_db` attenuates the bins above a
    random cutoff, as a voice with weak upper formants sounds. Off in the published recipes."""

    enabled: bool = False
    # Within [0.7, 1.4] every one of 80 mel triangles keeps an FFT bin (tests/test_augment.py).
    min_warp: Annotated[float, Range(ge=0.7, le=1.4)] = 0.9
    max_warp: Annotated[float, Range(ge=0.7, le=1.4)] = 1.1
    envelope_db: Annotated[float, Range(ge=0, le=40)] = 0.0
    # Attenuation of every bin above a random cutoff (45-80 % of the mel range, about 1.4-4.3 kHz with
    # banks to 7600 Hz), uniform up to high_cut_db dB: a voice whose upper formants are weak or gone.
    high_cut_db: Annotated[float, Range(ge=0, le=60)] = 0.0


@dataclass
class ConcatConfig:
    """Utterance concatenation: with probability `prob` a training batch is given as pairs of its
    utterances joined end to end (fbank and transcript), paired anew every epoch. An attention
    decoder trained on few distinct sentences learns them by heart and ends a new sentence where a
    known one ended; a joined pair puts a sentence end where only the audio shows it, and a sentence
    start after an unrelated one. Off in the published recipes."""

    prob: Annotated[float, FRACTION] = 0.0


@dataclass
class EncoderConfig:
    """PaddleSpeech/WeNet `encoder_conf`; names kept so their YAML maps key for key."""

    output_size: Annotated[int, AT_LEAST_1] = 256
    attention_heads: Annotated[int, AT_LEAST_1] = 4
    linear_units: Annotated[int, AT_LEAST_1] = 2048
    num_blocks: Annotated[int, AT_LEAST_1] = 12
    dropout_rate: Annotated[float, FRACTION] = 0.1
    positional_dropout_rate: Annotated[float, FRACTION] = 0.1
    attention_dropout_rate: Annotated[float, FRACTION] = 0.0
    input_layer: Literal["conv2d", "conv2d6", "conv2d8"] = "conv2d"  # subsampling x4, x6, x8
    # Channels of the subsampling convolutions; None means output_size, PaddleSpeech's layout.
    subsampling_channels: Annotated[int, AT_LEAST_1] | None = None
    normalize_before: bool = True
    pos_enc_layer_type: Literal["rel_pos", "abs_pos"] = "rel_pos"  # Conformer | Transformer
    # Must agree with pos_enc_layer_type: rel_selfattn with rel_pos, selfattn with abs_pos.
    selfattention_layer_type: Literal["rel_selfattn", "selfattn"] = "rel_selfattn"
    cnn_module_kernel: Annotated[int, AT_LEAST_1] = 15
    use_cnn_module: bool = True
    activation_type: Literal["swish", "relu"] = "swish"
    cnn_module_norm: Literal["batch_norm", "layer_norm"] = "batch_norm"
    # Streaming (U2): causal convolution and chunk-masked self-attention.
    causal: bool = False
    use_dynamic_chunk: bool = False  # train with a random chunk size per batch (1-25 frames or full)
    use_dynamic_left_chunk: bool = False  # ... and a random number of visible left chunks
    # The range of those random chunk sizes, in encoder frames (PaddleSpeech and WeNet: 1-25, i.e.
    # 40 ms-1 s at x4). A small model gains by training only on the chunks it will decode with.
    dynamic_chunk_min: Annotated[int, AT_LEAST_1] = 1
    dynamic_chunk_max: Annotated[int, AT_LEAST_1] = 25
    static_chunk_size: Annotated[int, AT_LEAST_0] = 0  # >0: always train and decode with this chunk size
    layer_norm_epsilon: Annotated[float, POSITIVE] = 1e-12  # PaddleSpeech's value (WeNet uses 1e-5)


@dataclass
class DecoderConfig:
    """Transformer attention decoder (PaddleSpeech `decoder_conf`)."""

    # transformer: left to right. bitransformer (U2++, PaddleSpeech `BiTransformerDecoder`, WeNet
    # `bitransformer`): a second, right-to-left decoder of r_num_blocks blocks reads the transcript
    # backwards; training mixes the two attention losses with reverse_weight, and attention
    # rescoring the two directions' scores (decode config `reverse_weight`).
    type: Literal["transformer", "bitransformer"] = "transformer"
    attention_heads: Annotated[int, AT_LEAST_1] = 4
    linear_units: Annotated[int, AT_LEAST_1] = 2048
    num_blocks: Annotated[int, AT_LEAST_1] = 6
    r_num_blocks: Annotated[int, AT_LEAST_0] = 0  # blocks of the right-to-left decoder (bitransformer)
    # Weight of the right-to-left attention loss (PaddleSpeech `model_conf.reverse_weight`):
    # att = (1 - w) * left-to-right + w * right-to-left; bitransformer only, in (0, 1).
    reverse_weight: Annotated[float, FRACTION] = 0.0
    dropout_rate: Annotated[float, FRACTION] = 0.1
    positional_dropout_rate: Annotated[float, FRACTION] = 0.1
    self_attention_dropout_rate: Annotated[float, FRACTION] = 0.0
    src_attention_dropout_rate: Annotated[float, FRACTION] = 0.0
    normalize_before: bool = True
    # Add sinusoid absolute positions to the encoder output before the decoder attends to it. A
    # rel_pos encoder's output carries no absolute position, so on little data the source attention
    # cannot learn where in the audio the next token lies and falls back on memorised text. Off in
    # the published configs (PaddleSpeech and WeNet have no such option: their checkpoints load as is).
    memory_positions: bool = False
    # What the memory positions count. frame: encoder frames, so the source attention learns where the
    # u-th token lies at a typical speaking rate, and on a faster voice it runs out of audio and ends
    # the sentence early. token: the units the CTC branch has emitted up to each frame (the running
    # sum of 1 - P(blank)), which is the same for every speaking rate: token u lies where it is near u.
    memory_position_unit: Literal["frame", "token"] = "frame"
    # Training: each decoder input token after <sos> is replaced by a random token with this
    # probability, so that the next token cannot be read off the previous ones alone (on little
    # text the decoder memorises the training sentences and then ignores the audio). 0: off, as published.
    input_noise: Annotated[float, FRACTION] = 0.0


@dataclass
class DeepSpeech2Config:
    """PaddleSpeech asr0 `DeepSpeech2Model` (docs/deepspeech2.md); keys as in its YAML, so an asr0
    config maps key for key. Two 3x3 stride-2 convolutions (32 channels), RNN layers each followed
    by LayerNorm, optional ReLU Linear layers, then a CTC output layer."""

    # PaddleSpeech accepts this key but always builds two convolutions; only 2 is accepted here.
    num_conv_layers: int = 2
    num_rnn_layers: Annotated[int, AT_LEAST_1] = 5
    rnn_layer_size: Annotated[int, AT_LEAST_1] = 1024
    # bidirect (offline) | forward (online: chunk-by-chunk streaming)
    rnn_direction: Literal["bidirect", "forward"] = "bidirect"
    use_gru: bool = False  # False: LSTM
    num_fc_layers: Annotated[int, AT_LEAST_0] = 0  # ReLU Linear layers after the RNN (0 in every published config)
    fc_layers_size_list: list[Annotated[int, AT_LEAST_1]] = field(default_factory=list)
    blank_id: Annotated[int, AT_LEAST_0] = 0
    # None, or "instance": warpctc divides each utterance's CTC gradient by its frame count (the
    # legacy v2.2 recipes); the loss value is the batch sum / batch size either way.
    ctc_grad_norm_type: Literal["instance"] | None = None


@dataclass
class ModelConfig:
    """`name` picks the network. u2: encoder + CTC + attention decoder, trained with
    ctc_weight*CTC + (1-ctc_weight)*attention (every key below but `deepspeech2`).
    deepspeech2: conv + RNN + CTC, configured by the `deepspeech2` section alone."""

    name: ModelName = "u2"
    encoder_type: EncoderType = "conformer"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    ctc_weight: Annotated[float, FRACTION] = 0.3
    lsm_weight: Annotated[float, FRACTION] = 0.1  # label smoothing of the attention loss
    length_normalized_loss: bool = False  # False: the attention loss is divided by the batch size
    ctc_dropout_rate: Annotated[float, FRACTION] = 0.0
    deepspeech2: DeepSpeech2Config = field(default_factory=DeepSpeech2Config)

    @property
    def streaming(self) -> bool:
        """Whether the network decodes chunk by chunk exactly: a forward-only DeepSpeech2, or a U2
        encoder trained with chunk masks whose convolutions, if any, are causal (a symmetric one
        would need frames of the next chunk); as the models' `supports_streaming`."""
        if self.name == "deepspeech2":
            return self.deepspeech2.rnn_direction == "forward"
        enc = self.encoder
        chunked = enc.use_dynamic_chunk or enc.static_chunk_size > 0
        return chunked and (self.encoder_type == "transformer" or not enc.use_cnn_module or enc.causal)


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 0.002  # checked with the scheduler (scheduler_problems)
    weight_decay: Annotated[float, AT_LEAST_0] = 1e-6  # Paddle's float weight_decay is a coupled L2 coefficient
    grad_clip: Annotated[float, AT_LEAST_0] = 5.0


@dataclass
class SchedulerConfig:
    # warmuplr (Noam, per update), warmup_cosine (per update: linear warmup, then a cosine to eta_min at
    # the run's last update), exponential (x gamma per epoch, DeepSpeech2),
    # cosine_warm_restarts (per update: cosine from lr to eta_min over t_0 updates, periods x t_mult).
    # Only the chosen scheduler's fields are checked (scheduler_problems): the others are unused.
    name: SchedulerName = "warmuplr"
    warmup_steps: int = 25000
    gamma: float = 0.93  # per-epoch decay of PaddleSpeech asr0 conf/deepspeech2.yaml
    t_0: int = 1000
    t_mult: int = 1
    eta_min: float = 0.0


@dataclass
class TrainingConfig:
    max_epoch: Annotated[int, AT_LEAST_1] = 150
    batch_size: Annotated[int, AT_LEAST_1] = 32
    accum_grad: Annotated[int, AT_LEAST_1] = 1
    # Utterances outside these bounds are filtered before training, counted and reported by id.
    min_duration_s: Annotated[float, AT_LEAST_0] = 0.5
    max_duration_s: Annotated[float, POSITIVE] = 20.0
    # Token filters (WeNet token_max_length / max_output_input_ratio; 0 = off): tokens per
    # utterance, and tokens per 10 ms feature frame.
    max_tokens: Annotated[int, AT_LEAST_0] = 0
    max_output_input_ratio: Annotated[float, AT_LEAST_0] = 0.0
    # > 0: dynamic batches of at most this many padded feature frames (batch_size is then ignored).
    max_frames_in_batch: Annotated[int, AT_LEAST_0] = 0
    num_workers: Annotated[int, AT_LEAST_0] = 0  # data-loading processes (0: load in the training process)
    log_interval: Annotated[int, AT_LEAST_1] = 50
    seed: int = 1
    num_threads: Annotated[int, AT_LEAST_0] = 0  # 0: every core this process may use (its CPU affinity)
    average_num: Annotated[int, AT_LEAST_1] = 30
    average_mode: Literal["best", "last"] = "best"  # best (lowest dev loss) or last (latest epochs)
    # Optimizer updates between mid-epoch checkpoints of the full state (0: end of each epoch only).
    checkpoint_interval: Annotated[int, AT_LEAST_0] = 0
    # Epoch checkpoints kept: the best keep_checkpoints by dev loss plus the latest (0: all).
    keep_checkpoints: Annotated[int, AT_LEAST_0] = 0
    amp: Literal["off", "fp16", "bf16"] = "off"  # fp16 (with a loss scaler) and bf16 run on GPUs only
    # Batches whose loss is NaN or infinite are skipped and counted; more than this many stops
    # training with the ids of the last one (a diverging run, or broken data).
    max_nonfinite_batches: Annotated[int, AT_LEAST_0] = 20
    # U2: the first ctc_only_updates optimizer updates train the encoder on the CTC loss alone, and
    # the attention decoder joins when the encoder output carries the audio (a decoder trained on a
    # still-blank encoder learns to guess from the text alone). The decoder is not run meanwhile:
    # a zero loss weight would leave it the optimizer's weight decay alone, which Adam normalises
    # into full-size steps towards zero.
    ctc_only_updates: Annotated[int, AT_LEAST_0] = 0
    # Fine-tuning (docs/training.md): start from the weights of this .pdparams checkpoint (ours, or one
    # written by import-paddlespeech; relative to the recipe directory), with a fresh optimizer,
    # schedule and epoch count. The rows of units both unit lists share are carried over.
    init_from: str = ""
    # Parameter-name prefixes, by whole dotted parts (encoder.embed, decoder), kept fixed in training.
    freeze: list[str] = field(default_factory=list)
    # Keep each training utterance's fbank in memory from its first epoch on, as Kaldi recipes dump
    # features once: its dither is drawn once, and later epochs neither read the audio nor compute the
    # fbank (a third of a demo epoch on 2 cores). The voice envelope and SpecAugment are still drawn
    # anew every epoch; speed perturbation and VTLP, which change the fbank itself, exclude it.
    cache_features: bool = False


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
    units: Literal["char", "bpe"] = "char"
    bpe_size: Annotated[int, AT_LEAST_1] = 5000
    bpe_model: str = ""
    # A shards.list from stage 0 --shards N: training then reads tar shards sequentially through a
    # shuffle and a sort buffer (for corpora too big to index); `train` still names the manifest.
    train_shards: str = ""
    shuffle_buffer: Annotated[int, AT_LEAST_1] = 1500
    sort_buffer: Annotated[int, AT_LEAST_1] = 500


@dataclass
class AsrConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    speed_perturb: SpeedPerturbConfig = field(default_factory=SpeedPerturbConfig)
    voice_perturb: VoicePerturbConfig = field(default_factory=VoicePerturbConfig)
    concat: ConcatConfig = field(default_factory=ConcatConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Derived when training starts, never set by hand: checked against the data on every load.
    vocab_size: Annotated[int, AT_LEAST_1] | None = None
    input_dim: Annotated[int, AT_LEAST_1] | None = None

    def problems(self) -> Iterator[str]:
        """Values wrong only together with another one, as '<key path>: <what to do>'."""
        tc, m, enc = self.training, self.model, self.model.encoder
        feats = self.features
        high = feats.mel_high_hz()
        if not 20.0 < high <= feats.sample_rate / 2:
            yield (f"features.high_freq: {feats.high_freq} puts the top of the mel banks at {high:g} Hz; it must lie "
                   f"above their 20 Hz bottom and at most Nyquist ({feats.sample_rate / 2:g} Hz): e.g. 0 (Nyquist) "
                   "or -400 (sherpa-onnx's)")
        if self.voice_perturb.min_warp > self.voice_perturb.max_warp:
            yield (f"voice_perturb.min_warp: {self.voice_perturb.min_warp} is above max_warp "
                   f"{self.voice_perturb.max_warp}; the warp factor is drawn between the two (e.g. 0.85 and 1.15)")
        yield from self._cache_problems()
        if 0 < tc.keep_checkpoints < tc.average_num:
            yield (f"training.keep_checkpoints: {tc.keep_checkpoints} would delete checkpoints stage 2 averages "
                   f"(average_num {tc.average_num}); keep at least average_num, or 0 for all")
        if enc.dynamic_chunk_min > enc.dynamic_chunk_max:
            yield (f"model.encoder.dynamic_chunk_min: {enc.dynamic_chunk_min} is above dynamic_chunk_max "
                   f"{enc.dynamic_chunk_max}; the training chunk size is drawn between the two")
        yield from decoder_problems(m.decoder)
        if m.decoder.memory_position_unit != "frame" and not m.decoder.memory_positions:
            yield (f"model.decoder.memory_position_unit: {m.decoder.memory_position_unit} says what the memory "
                   "positions count, but memory_positions is off: set memory_positions: true, or drop the unit")
        if any(not prefix.strip() or prefix != prefix.strip() for prefix in tc.freeze):
            yield (f"training.freeze: {tc.freeze} holds an empty or space-padded prefix; list parameter-name "
                   "prefixes such as encoder.embed")
        if tc.ctc_only_updates and m.name != "u2":
            yield (f"training.ctc_only_updates: {tc.ctc_only_updates} applies to U2 models (a CTC loss and an "
                   f"attention decoder); {m.name} has no decoder: set it to 0")
        if m.name == "u2":
            expected_attn = "rel_selfattn" if enc.pos_enc_layer_type == "rel_pos" else "selfattn"
            if enc.selfattention_layer_type != expected_attn:
                yield (f"model.encoder.selfattention_layer_type: must be {expected_attn} with pos_enc_layer_type "
                       f"{enc.pos_enc_layer_type}, got {enc.selfattention_layer_type}")
            if m.encoder_type == "transformer" and enc.pos_enc_layer_type == "rel_pos":
                yield ("model.encoder.pos_enc_layer_type: the transformer encoder uses abs_pos; set "
                       "pos_enc_layer_type: abs_pos, selfattention_layer_type: selfattn")
        yield from scheduler_problems(self.optim, self.scheduler)

    def _cache_problems(self) -> Iterator[str]:
        """training.cache_features keeps one fbank per utterance: nothing may change it between epochs."""
        if not self.training.cache_features:
            return
        vp = self.voice_perturb
        if self.speed_perturb.enabled:
            yield ("training.cache_features: speed perturbation computes a new fbank every epoch; set "
                   "speed_perturb.enabled: false, or cache_features: false")
        if vp.enabled and vp.min_warp != vp.max_warp:
            yield (f"training.cache_features: VTLP (voice_perturb warps {vp.min_warp}-{vp.max_warp}) computes a new "
                   "fbank every epoch; set min_warp equal to max_warp (1.0: no warp), or cache_features: false")
        if self.training.num_workers:
            yield (f"training.cache_features: the cache lives in the training process, but num_workers: "
                   f"{self.training.num_workers} loads batches in other processes; set num_workers: 0")
        if self.data.train_shards:
            yield ("training.cache_features: data.train_shards streams the audio from tar shards; the cache "
                   "needs the data.train manifest (set train_shards: \"\") or cache_features: false")


def decoder_problems(dec: DecoderConfig) -> Iterator[str]:
    """r_num_blocks and reverse_weight belong to the bitransformer decoder, which needs both
    (PaddleSpeech asserts r_num_blocks > 0 and 0 < reverse_weight < 1)."""
    if dec.type == "bitransformer":
        if dec.r_num_blocks < 1:
            yield ("model.decoder.r_num_blocks: the bitransformer decoder needs at least 1 right-to-left block "
                   "(U2++ recipes: 3)")
        if not 0 < dec.reverse_weight < 1:
            yield (f"model.decoder.reverse_weight: {dec.reverse_weight} must lie strictly between 0 and 1 for the "
                   "bitransformer decoder (U2++ recipes: 0.3)")
    elif dec.r_num_blocks or dec.reverse_weight:
        yield (f"model.decoder.r_num_blocks / reverse_weight ({dec.r_num_blocks} / {dec.reverse_weight}) apply to "
               "type: bitransformer only; set type: bitransformer, or drop them")


def scheduler_problems(optim: OptimConfig, sched: SchedulerConfig) -> Iterator[str]:
    """The fields the chosen scheduler uses; comparisons are written so that NaN fails too."""
    if not optim.lr > 0 or math.isinf(optim.lr):
        yield f"optim.lr is {optim.lr}; set it to a positive learning rate (e.g. 0.002)"
    if sched.name in ("warmuplr", "warmup_cosine"):
        if not sched.warmup_steps >= 1:
            yield (f"scheduler.warmup_steps is {sched.warmup_steps}; set it to a positive number of "
                   f"optimizer updates (e.g. 25000)")
    elif sched.name == "exponential":
        if not 0 < sched.gamma <= 1:
            yield (f"scheduler.gamma is {sched.gamma}; set it in (0, 1], the lr factor per epoch "
                   f"(e.g. 0.83; 1 keeps the lr constant)")
    elif sched.name == "cosine_warm_restarts":
        if not sched.t_0 >= 1:
            yield (f"scheduler.t_0 is {sched.t_0}; set it to the length of the first cosine period "
                   f"in optimizer updates, at least 1 (e.g. 1000)")
        if not sched.t_mult >= 1:
            yield (f"scheduler.t_mult is {sched.t_mult}; set it to an integer >= 1 "
                   f"(1: equal periods, 2: each period twice as long)")
    if sched.name in ("warmup_cosine", "cosine_warm_restarts") and not 0 <= sched.eta_min < optim.lr:
        yield (f"scheduler.eta_min is {sched.eta_min}; set it to the cosine floor, >= 0 and below "
               f"optim.lr ({optim.lr}), e.g. 0.0")


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


def resolve_base(name: str, including: Path) -> Path:
    """The file a `base:` entry names: `//...` from the repository's top, anything else from the
    folder of the file that names it (absolute paths as they are)."""
    if name.startswith(TOP_PREFIX):
        return (REPO_TOP / name[len(TOP_PREFIX):]).resolve()
    return (including.parent / name).resolve()


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and the `base:` files it names (one path or a list), merged in order with
    the file's own keys last: a later source wins."""
    path = Path(path).resolve()
    if path in _seen:
        raise AsrError(f"config {path} includes itself through 'base:'")
    raw = _read_yaml(path)
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) for b in bases):
        raise AsrError(f"{path}: 'base' must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _merge(merged, load_raw(resolve_base(base, path), _seen + (path,)))
    return _merge(merged, raw)


def _without_none(hint: Any) -> tuple[Any, bool]:
    """(hint without `| None`, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        return next(a for a in options if a is not type(None)), type(None) in options
    return hint, False


def _coerce(value: Any, hint: Any, where: str, source: Path) -> Any:
    """`value` as the type `hint` names; allowed values are checked afterwards by check_config."""
    hint, optional = _without_none(hint)
    if value is None and optional:
        return None
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is Literal:
        return value
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
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        keys = ", ".join(f"'{prefix + '.' if prefix else ''}{k}'" for k in unknown)
        raise AsrError(
            f"{source}: unknown config key(s) {keys}; allowed here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix + '.' if prefix else ''}{k}", source) for k, v in raw.items()}
    return cls(**kwargs)


def _value_problem(value: Any, hint: Any, where: str) -> str | None:
    """'<where>: <what is wrong>' when `value` is outside what `hint` allows, else None."""
    hint, optional = _without_none(hint)
    if value is None and optional:
        return None
    if typing.get_origin(hint) is Annotated:
        hint, *marks = typing.get_args(hint)
        for mark in marks:
            if isinstance(mark, Range) and not mark.admits(value):
                return f"{where}: {value!r} is not {mark}"
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if not any(type(value) is type(c) and value == c for c in choices):
            return f"{where}: {value!r} is not one of {', '.join(repr(c) for c in choices)}"
    elif origin is list:
        (item,) = typing.get_args(hint)
        return next(filter(None, (_value_problem(v, item, f"{where}[{i}]") for i, v in enumerate(value))), None)
    elif dataclasses.is_dataclass(hint):
        return next(_field_problems(value, f"{where}."), None)
    return None


def _field_problems(config: Any, prefix: str = "") -> Iterator[str]:
    hints = typing.get_type_hints(type(config), include_extras=True)
    for f in dataclasses.fields(config):
        problem = _value_problem(getattr(config, f.name), hints[f.name], prefix + f.name)
        if problem:
            yield problem


def check_config(config: Any, source: str | Path = "config", prefix: str = "") -> None:
    """Raise an AsrError naming `source` and the key path for the first value of a config dataclass
    (AsrConfig, DecodeConfig, or one of their sections with its `prefix`, e.g. "scheduler.") outside
    what its field allows."""
    problems = _field_problems(config, prefix)
    if hasattr(config, "problems"):  # checks of values that depend on each other
        problems = itertools.chain(problems, config.problems())
    problem = next(problems, None)
    if problem is not None:
        raise AsrError(f"{source}: {problem}")


def load_config(path: Path) -> AsrConfig:
    """Load and check a config file (with its `base:` files)."""
    config = _build(AsrConfig, load_raw(Path(path)), "", Path(path))
    check_config(config, path)
    return config


@dataclass
class DecodeConfig:
    """`conf/decode.yaml`: how stages 3, 5 and 6 decode (PaddleSpeech conf/tuning/decode.yaml; docs/decoding.md)."""

    methods: list[DecodeMethod] = field(default_factory=lambda: [
        "ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"])
    beam_size: Annotated[int, AT_LEAST_1] = 10
    ctc_weight: Annotated[float, AT_LEAST_0] = 0.5  # weight of the CTC prefix score in attention rescoring
    # Attention rescoring of a bitransformer (U2++) model: decoder score = (1 - w) * left-to-right +
    # w * right-to-left (PaddleSpeech decode `reverse_weight`). Unset: the model's own
    # model.decoder.reverse_weight (0 for a transformer decoder, whose models need 0).
    reverse_weight: Annotated[float, FRACTION] | None = None
    # -1: full attention over the whole utterance. >0: streaming, the encoder runs chunk by chunk
    # with this many encoder frames per chunk and caches (the model must be trained for it).
    decoding_chunk_size: Annotated[int, Range(ge=1, also=(-1,))] = -1
    # Chunks of history kept in the attention cache; -1: all.
    num_decoding_left_chunks: Annotated[int, Range(ge=-1)] = -1
    batch_size: Annotated[int, AT_LEAST_1] = 16  # utterances per encoder pass (streaming decodes one at a time)
    # Attention beam search runs at most as many steps as the encoder has frames (PaddleSpeech). A
    # ratio r > 0 also caps it at r x (CTC greedy length) + 2 tokens: a decoder that has not learnt
    # to stop otherwise runs every step, and each step re-reads the whole prefix.
    attention_length_ratio: Annotated[float, AT_LEAST_0] = 0.0
    # ctc_beam_search_lm: CTC prefix beam search with an n-gram LM (ARPA or KenLM binary), ranking by
    # log P_ctc + alpha * log10 P_lm + beta * length, as PaddleSpeech's DeepSpeech2 decoder.
    lm_path: str = ""  # relative to the recipe directory, e.g. data/lm/char_5gram.arpa
    alpha: float = 2.2
    beta: float = 4.3
    # Per frame, expand the fewest tokens covering this probability mass, and at most cutoff_top_n
    # of them (0: beam_size).
    cutoff_prob: Annotated[float, Range(gt=0, le=1)] = 1.0
    cutoff_top_n: Annotated[int, AT_LEAST_0] = 0
    # Hotwords (contextual biasing, docs/decoding.md): a file of phrases, one a line, that
    # ctc_prefix_beam_search and attention_rescoring favour by context_score per matched unit.
    context_list: str = ""  # relative to the recipe directory; "" (or --context_list on the command line)
    context_score: Annotated[float, AT_LEAST_0] = 2.0

    def problems(self) -> Iterator[str]:
        if not self.methods:
            yield f"methods: name at least one of {', '.join(typing.get_args(DecodeMethod))}"
        if self.context_list and not set(self.methods) & {"ctc_prefix_beam_search", "attention_rescoring"}:
            yield ("context_list: hotwords bias ctc_prefix_beam_search and attention_rescoring, and methods names "
                   "neither of them")


def load_decode_config(path: Path) -> DecodeConfig:
    """Load and check a decoding config (with its `base:` files)."""
    config = _build(DecodeConfig, load_raw(Path(path)), "", Path(path))
    check_config(config, path)
    return config


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
