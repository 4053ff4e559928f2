"""Export a model as Paddle Inference programs, one per runtime function (legacy ``.pdmodel``).

Which functions a model has, the inputs its parity check feeds and its streaming check come from
its family (`paddle_asr.families`; U2: `export.u2`, DeepSpeech2: `export.deepspeech2`); what every
family shares (saving a program, comparing it with the dynamic graph) is in `export.common`.
Every program is checked against the dynamic graph before the directory is moved into place.
"""

from __future__ import annotations

from pathlib import Path

import paddle

from paddle_asr.artifacts import atomic_directory
from paddle_asr.export.common import ExportError, check_function_parity, save_function
from paddle_asr.families import family_of


def export_model(model: paddle.nn.Layer, feat_dim: int, out_dir: Path, *, pir: bool = False) -> dict[str, float]:
    """Write every runtime function of `model` (any family) under `out_dir`, each verified against
    the dynamic graph before the directory is moved into place. Returns {function: max |diff|}."""
    out_dir = Path(out_dir)
    fam = family_of(model)
    was_training = model.training
    model.eval()  # BatchNorm running stats, no dropout
    diffs: dict[str, float] = {}
    try:
        with atomic_directory(out_dir) as tmp_dir:
            inputs = fam.parity_inputs(model, feat_dim)
            for fn in fam.runtime_functions(model, feat_dim):
                save_function(model, fn, tmp_dir / fn.name, pir=pir)
                try:
                    if fn.name == "encoder_chunk":
                        diffs[fn.name] = fam.check_streaming_parity(model, tmp_dir / fn.name, feat_dim)
                    else:
                        diffs[fn.name] = check_function_parity(model, fn, tmp_dir / fn.name, inputs[fn.name])
                except ExportError as e:
                    raise ExportError(f"export to {out_dir} rejected, nothing written: {e}") from None
    finally:
        if was_training:
            model.train()
    return diffs
