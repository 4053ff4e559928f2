"""Fine-tuning: start training from the weights of a checkpoint (`training.init_from`), and keep
chosen parameters fixed (`training.freeze`).

Units. A checkpoint is read with the units it was trained on: `vocab.txt` in its experiment
directory (stage 1 and import-paddlespeech write it there), else the `data.vocab` its `train.yaml`
names (relative to the recipe directory that holds `exp/<name>/`). The rows of the unit-indexed
tensors (each family's `unit_tensors`: the CTC output layer, the decoder's embedding and output
layer) are carried over by unit name for every unit both share, special units included; the rows of
units the checkpoint lacks keep the layer's initialiser. Every other tensor must match in name and
shape.

Freezing. A prefix names parameters by whole dotted components: `encoder.encoders.1` freezes block 1
and not block 10. Frozen parameters get no gradient and are not given to the optimizer, so they stay
bit for bit what they were. Batch norm layers under a frozen prefix stay in evaluation mode while
training, so their running statistics stay the checkpoint's too: the frozen weights around them were
fitted to those statistics, and a few fine-tuning batches would only replace them with noisier ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddle import nn

from paddle_asr.config import AsrConfig, load_config
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.errors import AsrError
from paddle_asr.models.registry import check_state_dict, read_checkpoint

UNITS_FILE = "vocab.txt"  # the units of an experiment's checkpoints, in its directory
_SHOWN = 10  # units named in the log
_BATCH_NORMS = (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm)


def checkpoint_exp_dir(ckpt: Path) -> Path:
    """The experiment directory of `exp/<name>/checkpoints/<file>.pdparams` (else the file's folder)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def checkpoint_units_file(ckpt: Path) -> Path:
    """The units file `ckpt` was trained with (see the module docstring), or an error saying where to put it."""
    exp = checkpoint_exp_dir(ckpt)
    candidates = [exp / UNITS_FILE]
    if (exp / "train.yaml").is_file():
        vocab = Path(load_config(exp / "train.yaml").data.vocab)
        candidates.append(vocab if vocab.is_absolute() else exp.parent.parent / vocab)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise AsrError(f"training.init_from: cannot tell the units {ckpt} was trained with: none of "
                       f"{', '.join(map(str, candidates))} exists. Put its units file (one unit a line) at "
                       f"{exp / UNITS_FILE}; for a PaddleSpeech model run paddle-asr import-paddlespeech first")
    return found


@dataclass
class UnitMap:
    """Where each of the new units' rows comes from: `source[j]` is the checkpoint's row for new unit j,
    or -1 for a unit the checkpoint lacks."""

    source: np.ndarray
    new_units: list[str]
    dropped_units: list[str]  # the checkpoint's units the new recipe has not

    @classmethod
    def between(cls, old: list[str], new: list[str]) -> UnitMap:
        index = {u: i for i, u in enumerate(old)}
        source = np.array([index.get(u, -1) for u in new], dtype=np.int64)
        kept = set(new)
        return cls(source, [u for u in new if u not in index], [u for u in old if u not in kept])

    @property
    def carried(self) -> int:
        return int((self.source >= 0).sum())


def remap_unit_rows(state: dict, model: nn.Layer, unit_tensors: dict[str, int], units: UnitMap,
                    old_count: int, source: str) -> dict:
    """`state` with each unit-indexed tensor rebuilt for the new units: the checkpoint's row of every
    shared unit, the model's own (freshly initialised) row of every new one."""
    fresh = model.state_dict()
    out = dict(state)
    for name, axis in unit_tensors.items():
        if name not in state or name not in fresh:
            continue  # reported as missing/unexpected by check_state_dict
        old = np.asarray(state[name].numpy() if isinstance(state[name], paddle.Tensor) else state[name])
        if old.shape[axis] != old_count:
            raise AsrError(f"training.init_from: {source}: {name} has {old.shape[axis]} units (shape "
                           f"{list(old.shape)}) but its units file lists {old_count}; give the units file it "
                           "was trained with")
        target = fresh[name].numpy().copy()
        if np.delete(old.shape, axis).tolist() != np.delete(target.shape, axis).tolist():
            continue  # a mismatch beyond the units: reported with the others by check_state_dict
        keep = units.source >= 0
        moved = np.moveaxis(target, axis, 0)  # a view: writing it writes `target`
        moved[keep] = np.moveaxis(old, axis, 0)[units.source[keep]]
        out[name] = paddle.to_tensor(target)
    return out


def load_initial_weights(model: nn.Layer, config: AsrConfig, recipe_dir: Path, say: Callable[[str], None]) -> None:
    """Set `model` to the weights of `training.init_from`, with its unit rows remapped to this
    recipe's units; anything else that does not fit is a listed error."""
    from paddle_asr.families import family

    ckpt = Path(recipe_dir) / config.training.init_from
    units_file = checkpoint_units_file(ckpt)
    old_units = CharTokenizer.from_file(units_file).units
    new_units = CharTokenizer.from_file(Path(recipe_dir) / config.data.vocab).units
    units = UnitMap.between(old_units, new_units)
    unit_tensors = family(config.model.name).unit_tensors
    _check_new_rows_train(model, unit_tensors, units)
    state = remap_unit_rows(read_checkpoint(ckpt), model, unit_tensors, units, len(old_units), str(ckpt))
    check_state_dict(model, state, f"{ckpt} (training.init_from)",
                     hint="fine-tuning keeps the checkpoint's network: take the model section of its train.yaml")
    model.set_state_dict(state)
    say(f"stage 1: initialised from {config.training.init_from} (its CMVN included; units {units_file}): "
        f"{units.carried} of this recipe's {len(new_units)} units carried over, "
        f"{len(units.new_units)} new{_named(units.new_units)}; "
        f"{len(units.dropped_units)} of the checkpoint's {len(old_units)} units unused{_named(units.dropped_units)}")
    _note_feature_changes(ckpt, config, say)


def _check_new_rows_train(model: nn.Layer, unit_tensors: dict[str, int], units: UnitMap) -> None:
    """A frozen unit-indexed tensor would keep its new units' rows as initialised: the model could never emit them."""
    params = dict(model.named_parameters())
    frozen = [name for name in unit_tensors if name in params and params[name].stop_gradient]
    if units.new_units and frozen:
        raise AsrError(f"training.freeze keeps {', '.join(frozen)} fixed, but {len(units.new_units)} of this recipe's "
                       f"units are not in the checkpoint's{_named(units.new_units)}: their rows would stay as "
                       "initialised. Freeze less, or keep the checkpoint's units (data.vocab: its units file)")


def _named(units: list[str]) -> str:
    if not units:
        return ""
    more = f" and {len(units) - _SHOWN} more" if len(units) > _SHOWN else ""
    return f" ({' '.join(units[:_SHOWN])}{more})"


def _note_feature_changes(ckpt: Path, config: AsrConfig, say: Callable[[str], None]) -> None:
    """Fbank settings that differ from the checkpoint's: the network would meet features it was not trained on."""
    train_yaml = checkpoint_exp_dir(ckpt) / "train.yaml"
    if not train_yaml.is_file():
        return
    old = load_config(train_yaml).features
    changed = [f"{k} {getattr(old, k)} -> {getattr(config.features, k)}" for k in vars(old)
               if k != "dither" and getattr(old, k) != getattr(config.features, k)]
    if changed:
        say(f"stage 1: note: the features differ from those {ckpt} was trained on ({', '.join(changed)}); "
            f"copy the features section of {train_yaml} into the config to keep them")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def freeze_parameters(model: nn.Layer, prefixes: Iterable[str], say: Callable[[str], None]) -> None:
    """Stop the gradient of every parameter under one of `prefixes`; each prefix must name some."""
    prefixes = list(prefixes)
    if not prefixes:
        return
    named = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    trainable_before = sum(int(np.prod(p.shape)) for _, p in named)
    for prefix in prefixes:
        if not any(_under(n, prefix) for n, _ in named):
            tops = sorted({".".join(n.split(".")[:2]) for n, _ in named})
            raise AsrError(f"training.freeze: '{prefix}' names no trainable parameter (prefixes are whole dotted "
                           f"parts of parameter names, e.g. {', '.join(tops[:8])}); correct it in the config")
    frozen = [p for n, p in named if any(_under(n, prefix) for prefix in prefixes)]
    if len(frozen) == len(named):
        raise AsrError(f"training.freeze: {prefixes} freezes every parameter: nothing would train")
    for p in frozen:
        p.stop_gradient = True
    kept = sum(int(np.prod(p.shape)) for p in frozen)
    say(f"stage 1: training.freeze {', '.join(prefixes)}: {len(frozen)} tensors ({kept:,} values) fixed; "
        f"{trainable_before - kept:,} of {trainable_before:,} parameters train")


def hold_frozen_norms(model: nn.Layer, prefixes: Iterable[str]) -> None:
    """Batch norm layers under a frozen prefix in evaluation mode: their running statistics stay fixed."""
    prefixes = list(prefixes)
    for name, layer in model.named_sublayers():
        if isinstance(layer, _BATCH_NORMS) and any(_under(name, p) for p in prefixes):
            layer.eval()
