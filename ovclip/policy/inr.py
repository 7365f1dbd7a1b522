"""Quantization-noise diagnostics per block (paper Eq. 1, 5) and pathological-layer pruning (Eq. 6).

The paper does not say which token z_L is; ovclip uses the mean of the patch tokens (what the SSA
heads read), averaged over images as written: INR = ||E_x z||^2 / E_x ||eps - E eps||^2.
"""

from __future__ import annotations

import numpy as np


def inr(fp32: np.ndarray, int8: np.ndarray) -> float:
    """Information-to-noise ratio of one layer: (N, D) FP32 and INT8 features of the same images."""
    eps = int8.astype(np.float64) - fp32.astype(np.float64)
    signal = float(np.sum(fp32.astype(np.float64).mean(0) ** 2))
    noise = float(np.sum(eps.var(0)))
    return signal / max(noise, 1e-30)


def nsr(prev_fp32: np.ndarray, fp32: np.ndarray, int8: np.ndarray) -> float:
    """Eq. 1: mean over images of ||z_int8 - z_fp32|| / ||z_fp32 - z_prev_fp32||."""
    quant = np.linalg.norm(int8.astype(np.float64) - fp32, axis=-1)
    nat = np.linalg.norm(fp32.astype(np.float64) - prev_fp32, axis=-1)
    return float(np.mean(quant / np.maximum(nat, 1e-30)))


def prune(inrs: dict[int, float], kappa: float = 0.5) -> tuple[list[int], list[int]]:
    """Keep exit L unless INR(L) < kappa x mean INR over the candidates; returns (kept, pruned)."""
    mean = float(np.mean(list(inrs.values())))
    kept = [layer for layer, v in sorted(inrs.items()) if v >= kappa * mean]
    pruned = [layer for layer, v in sorted(inrs.items()) if v < kappa * mean]
    return kept, pruned
