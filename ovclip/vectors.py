"""Vector helpers the build and the runtime share (numpy only)."""

from __future__ import annotations

import numpy as np

NORM_FLOOR = 1e-12  # a zero vector stays zero instead of becoming NaN


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Each row (last axis) of `x` scaled to unit length, in `x`'s dtype."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_FLOOR)
