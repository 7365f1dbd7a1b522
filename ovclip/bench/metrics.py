"""Accuracy metrics: zero-shot top-k, text->image recall@k, the early-exit rescue quadrants."""

from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true label is among the k highest scores (ties broken by index order)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


def recall_at_k(
    text_emb: np.ndarray, image_emb: np.ndarray, image_index: np.ndarray, ks=(1, 5, 10)
) -> dict[str, float]:
    """Text->image retrieval: for caption i, is image image_index[i] among the top-k images?"""
    sims = text_emb @ image_emb.T
    rank_of_true = (sims > sims[np.arange(len(sims)), image_index][:, None]).sum(axis=1)
    return {f"R@{k}": float(np.mean(rank_of_true < k)) for k in ks}


def rescue_quadrants(ee_correct: np.ndarray, full_correct: np.ndarray) -> dict[str, float | int]:
    """The paper's Table 4: both right, rescue (EE right, full wrong), loss (EE wrong, full right), both wrong."""
    ee, full = np.asarray(ee_correct, bool), np.asarray(full_correct, bool)
    n = len(ee)
    q = {
        "both_correct": int(np.sum(ee & full)),
        "rescue": int(np.sum(ee & ~full)),
        "loss": int(np.sum(~ee & full)),
        "both_wrong": int(np.sum(~ee & ~full)),
    }
    q["n"] = n
    q["net"] = q["rescue"] - q["loss"]
    q["net_points"] = 100.0 * q["net"] / n if n else float("nan")
    return q


def exit_histogram(exit_layer: np.ndarray, exits: list[int], num_layers: int) -> dict[str, int]:
    return {str(layer): int(np.sum(exit_layer == layer)) for layer in [*exits, num_layers]}
