"""Export an acoustic model to a Paddle Inference program (legacy ``.pdmodel``).

Why a *legacy* program: Paddle 3 saves PIR programs (``model.json``) by
default, but PaddleSlim 2.6 ``quant_post_static`` only understands the legacy
``ProgramDesc`` and Paddle Inference only runs the oneDNN INT8 passes
(``cpu_quantize_pass`` & co.) on the legacy IR. So the FP32 model we ship is
the same legacy program the INT8 model is derived from, which keeps the
FP32-vs-INT8 comparison fair.

Why no child process: setting ``FLAGS_enable_pir_api=0`` with
``paddle.set_flags`` after ``import paddle`` is *not* enough (dy2static then
fails with ``TypeError: Cannot interpret '<VarType.FP32: 5>' as a data type``
because the dtype bindings and ``paddle.static.Program`` aliases stay on PIR).
``paddle.pir_utils.DygraphOldIrGuard`` performs the full switch (flag, dtype
binding, Program aliases) and restores PIR on exit, so the export runs in
the caller's process and the caller's later PIR work is unaffected. If the
process was started with ``FLAGS_enable_pir_api=0`` the guard is a no-op.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from paddle.static import InputSpec

from paddle_asr.artifacts import atomic_directory

MODEL_FILENAME = "model.pdmodel"
PARAMS_FILENAME = "model.pdiparams"

# Parity thresholds between dygraph and the exported predictor.
PARITY_ATOL = 1e-3
# Lengths of the random parity batch: two different lengths so that padding
# masks are exercised; long enough for 8x conv subsampling.
PARITY_LENGTHS = (173, 96)


class ExportError(RuntimeError):
    """Raised when the exported program does not reproduce the dygraph model."""


class _InferWrapper(paddle.nn.Layer):
    """Expose ``model.forward_infer`` as ``forward`` so ``jit.save`` saves it.

    ``paddle.jit.save`` serialises a Layer's ``forward``; wrapping keeps the
    training-time ``forward`` of the real model untouched.
    """

    def __init__(self, model: paddle.nn.Layer) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: paddle.Tensor, feats_lengths: paddle.Tensor):
        return self.model.forward_infer(feats, feats_lengths)


def input_specs(feat_dim: int) -> list[InputSpec]:
    # Batch and time are both dynamic (None) so one program serves every
    # utterance length and batch size.
    return [
        InputSpec([None, None, feat_dim], "float32", name="feats"),
        InputSpec([None], "int64", name="feats_lengths"),
    ]


def _parity_batch(feat_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.asarray(PARITY_LENGTHS, dtype=np.int64)
    feats = rng.standard_normal((len(lengths), int(lengths.max()), feat_dim)).astype(np.float32)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0  # realistic zero padding
    return feats, lengths


def check_parity(
    model: paddle.nn.Layer, model_dir: Path, feats: np.ndarray, feats_lengths: np.ndarray
) -> float:
    """Compare dygraph ``forward_infer`` with the exported predictor.

    Only frames inside each utterance's output length are compared: padded
    frames are undefined (masked softmax rows, BatchNorm over padding) and
    oneDNN and the reference kernels may legitimately disagree there.
    Returns the max abs difference; raises ``ExportError`` on mismatch.
    """
    from paddle_asr.export.inference import InferenceModel

    with paddle.no_grad():
        ref_lp, ref_len = model.forward_infer(
            paddle.to_tensor(feats), paddle.to_tensor(feats_lengths)
        )
    ref_lp, ref_len = ref_lp.numpy(), ref_len.numpy()
    # Parity is checked against the plain FP32 configuration we ship.
    got_lp, got_len = InferenceModel(model_dir).run(feats, feats_lengths)
    # The runner pads time to its length bucket, so it may return more (padding) frames.
    if ref_lp.shape[0::2] != got_lp.shape[0::2] or got_lp.shape[1] < ref_lp.shape[1] or not np.array_equal(ref_len, got_len):
        raise ExportError(
            f"exported model in {model_dir} disagrees with dygraph on shapes/lengths: "
            f"log_probs {got_lp.shape} vs {ref_lp.shape}, lengths {got_len} vs {ref_len}"
        )
    max_diff = 0.0
    for i, n in enumerate(ref_len):
        d = np.abs(ref_lp[i, :n] - got_lp[i, :n])
        max_diff = max(max_diff, float(d.max()) if d.size else 0.0)
    if not np.isfinite(max_diff) or max_diff >= PARITY_ATOL:
        raise ExportError(
            f"exported model in {model_dir} disagrees with dygraph: max |log_prob diff| "
            f"= {max_diff:.3g} (threshold {PARITY_ATOL})"
        )
    return max_diff


def export_inference_model(model: paddle.nn.Layer, feat_dim: int, out_dir: Path) -> Path:
    """Save ``model.forward_infer`` as ``out_dir/model.pdmodel`` + ``model.pdiparams``.

    The export is verified (dygraph vs Paddle Inference on a 2-utterance batch
    of different lengths) before it is moved into place. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    was_training = model.training
    model.eval()  # BatchNorm running stats, no dropout
    try:
        with atomic_directory(out_dir) as tmp_dir:
            wrapper = _InferWrapper(model)
            wrapper.eval()
            from paddle_asr.export.inference import quiet_output

            # quiet_output: jit.save logs "New Executor is Running" via glog and
            # warns about deprecated attrs; shown only if the save fails.
            with paddle.pir_utils.DygraphOldIrGuard(), quiet_output():
                static_layer = paddle.jit.to_static(
                    wrapper, input_spec=input_specs(feat_dim), full_graph=True
                )
                paddle.jit.save(static_layer, str(tmp_dir / "model"))
            missing = [f for f in (MODEL_FILENAME, PARAMS_FILENAME) if not (tmp_dir / f).is_file()]
            if missing:
                raise ExportError(f"paddle.jit.save did not write {missing} in {tmp_dir}")
            feats, lengths = _parity_batch(feat_dim)
            try:
                check_parity(model, tmp_dir, feats, lengths)
            except ExportError as e:
                raise ExportError(f"export to {out_dir} rejected, nothing written: {e}") from None
    finally:
        if was_training:
            model.train()
    return out_dir
