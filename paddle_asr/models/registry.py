"""Models built from config (`model.name`), and loading weights with clear mismatch errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from paddle import nn

from paddle_asr.config import AsrConfig
from paddle_asr.errors import AsrError
from paddle_asr.features import load_cmvn


def build_model(config: AsrConfig, cmvn: tuple[np.ndarray, np.ndarray] | None = None) -> nn.Layer:
    """Build the network of a resolved config (vocab_size and input_dim filled by training), by the
    builder of its family (`paddle_asr.families`)."""
    # Imported here: the family table builds on the model modules this package holds.
    from paddle_asr.families import family

    build = family(config.model.name).build
    if config.vocab_size is None or config.input_dim is None:
        raise AsrError("the config has no vocab_size/input_dim: use the train.yaml written by stage 1")
    if cmvn is None:
        dim = config.input_dim
        cmvn = (np.zeros(dim, np.float32), np.ones(dim, np.float32))  # overwritten by the checkpoint
    return build(config, cmvn)


def build_model_for_training(config: AsrConfig, recipe_dir: Path) -> nn.Layer:
    return build_model(config, load_cmvn(recipe_dir / config.data.cmvn))


def check_state_dict(model: nn.Layer, state: dict, source: str, *,
                     hint: str = "use the train.yaml saved next to the checkpoint, or a checkpoint trained with "
                                 "this config") -> None:
    """Raise a listed error for any missing, unexpected or mis-shaped tensor, ending with `hint`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if list(state[k].shape) != list(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {source} does not fit the model built from the config:"]
        lines += [f"  missing in checkpoint: {k}" for k in missing[:20]]
        lines += [f"  not in model: {k}" for k in unexpected[:20]]
        lines += [f"  shape mismatch {m}" for m in mismatched[:20]]
        lines.append(f"  {hint}")
        raise AsrError("\n".join(lines))


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"checkpoint {path} does not exist; run the training (stage 1) or averaging (stage 2)")
    try:
        return paddle.load(str(path))
    except Exception as e:  # paddle raises several types for corrupt files
        raise AsrError(f"cannot read checkpoint {path} ({type(e).__name__}: {e})") from None


def load_weights(model: nn.Layer, path: Path) -> None:
    """Load a `.pdparams` file; any missing, unexpected or mis-shaped tensor is a listed error."""
    state = read_checkpoint(path)
    check_state_dict(model, state, str(path))
    model.set_state_dict(state)
