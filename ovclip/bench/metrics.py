"""Accuracy metrics: zero-shot top-k, text->image recall@k, class-prompt retrieval (precision@k, average
precision), the early-exit rescue quadrants."""

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


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Share of relevant items among the k highest-scoring ones (ties broken by index order)."""
    scores, relevant = np.asarray(scores).reshape(-1), np.asarray(relevant, bool).reshape(-1)
    k = min(k, len(scores))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(relevant[top].mean()) if k else float("nan")


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision of a ranking by `scores`, as scikit-learn's `average_precision_score` computes it:
    sum over distinct score thresholds of (recall step) x (precision there); tied scores form one step.
    NaN when nothing is relevant."""
    scores, relevant = np.asarray(scores).reshape(-1), np.asarray(relevant, bool).reshape(-1)
    if not relevant.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, r = scores[order], relevant[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(r)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def class_prompt_retrieval(
    image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray, ks=(10, 100)
) -> dict[str, float]:
    """Each class's prompt embedding ranks every image; an image is relevant when it is of that class.
    Precision@k and average precision per class, averaged over the classes that have images (mAP)."""
    labels = np.asarray(labels)
    sims = np.asarray(class_emb, np.float32) @ np.asarray(image_emb, np.float32).T  # (C, N)
    present = [c for c in range(len(sims)) if np.any(labels == c)]
    out = {f"P@{k}": float(np.mean([precision_at_k(sims[c], labels == c, k) for c in present])) for k in ks}
    out["mAP"] = float(np.mean([average_precision(sims[c], labels == c) for c in present]))
    out["classes"] = len(present)
    return out
