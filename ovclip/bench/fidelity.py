"""Embedding fidelity: how close a variant's image embeddings stay to a reference's (FP32, full depth) on the
same images — the cosine of each pair, and whether each image keeps its nearest neighbours within the set.
Needs no labels."""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 10


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(emb: np.ndarray, k: int = NEIGHBOURS, chunk: int = 1024) -> np.ndarray:
    """(N, k) indices of each row's k most cosine-similar other rows (itself excluded), best first; computed
    `chunk` rows at a time, so N x N similarities are never held at once."""
    e = _unit(emb)
    n = len(e)
    k = min(k, n - 1)
    out = np.empty((n, k), np.int64)
    for i in range(0, n, chunk):
        sims = e[i : i + chunk] @ e.T
        rows = np.arange(len(sims))
        sims[rows, rows + i] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(sims, part, axis=1)
        out[i : i + chunk] = np.take_along_axis(part, np.argsort(-best, axis=1, kind="stable"), axis=1)
    return out


def neighbour_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the share of neighbours (rows of `a` and `b`, same k) the two lists have in common."""
    k = a.shape[1]
    return np.array([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b, strict=True)])


def embedding_fidelity(
    emb: np.ndarray,
    ref: np.ndarray,
    k: int = NEIGHBOURS,
    neighbours: np.ndarray | None = None,
    ref_neighbours: np.ndarray | None = None,
) -> dict:
    """Cosine of each image's embedding to its reference embedding (mean, min, 1st percentile), and the mean
    overlap of its top-k nearest neighbours within the set with the reference's (`neighbours`,
    `ref_neighbours`: `nearest_neighbours` of each, when already computed)."""
    if emb.shape != ref.shape:
        raise ValueError(f"embeddings {emb.shape} and reference {ref.shape} differ in shape")
    cos = np.sum(_unit(emb) * _unit(ref), axis=1)
    out = {
        "n": len(cos),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "p01_cosine": float(np.percentile(cos, 1)),
        f"top{k}_overlap": None,
    }
    if len(cos) > k:
        mine = neighbours if neighbours is not None else nearest_neighbours(emb, k)
        theirs = ref_neighbours if ref_neighbours is not None else nearest_neighbours(ref, k)
        out[f"top{k}_overlap"] = float(neighbour_overlap(mine, theirs).mean())
    return out


def same_class_precision(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Image->image retrieval: the share of each image's nearest neighbours that share its class, averaged."""
    labels = np.asarray(labels)
    return float(np.mean(labels[neighbours] == labels[:, None]))
