"""SpecAugment as WeNet applies it: masks on the un-normalised fbank, filled with zeros.

Widths are uniform integers in [1, max]; starts uniform over the axis; masks are clipped at the
end; time masks first, then frequency masks (REFERENCE §4.1, WeNet column).
"""

from __future__ import annotations

import numpy as np

from paddle_asr.config import SpecAugmentConfig


def spec_augment(feats: np.ndarray, conf: SpecAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    if not conf.enabled:
        return feats
    out = feats.copy()
    frames, bins = out.shape
    for _ in range(conf.num_t_mask):
        if frames < 2 or conf.max_t < 1:
            break
        start = int(rng.integers(0, frames))
        width = int(rng.integers(1, conf.max_t + 1))
        out[start : min(frames, start + width), :] = 0.0
    for _ in range(conf.num_f_mask):
        if conf.max_f < 1:
            break
        start = int(rng.integers(0, bins))
        width = int(rng.integers(1, conf.max_f + 1))
        out[:, start : min(bins, start + width)] = 0.0
    return out
