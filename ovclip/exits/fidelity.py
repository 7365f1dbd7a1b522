"""Thresholds of a label-free exit rule, chosen to keep the early-exit embeddings faithful to full depth.

The statistic is the *fidelity* of a cascade: the mean, over images, of the cosine between the embedding an
image leaves with and the same folder's full-depth embedding of that image (1 for images that run to full
depth). `MinFidelity(bound)` asks for the fewest FLOPs whose fidelity on held-out calibration images is at
least `bound` with margin: the one-sided lower confidence bound mean - z * s / sqrt(n) (normal approximation,
z at `confidence`, s the sample standard deviation of the per-image cosines) must reach the bound.
`FlopsBudget` (from `ovclip.exits.thresholds`) asks for the most faithful thresholds within a FLOPs budget.

A fidelity trace is a `policy.cascade.Trace` whose per-exit `correct` arrays hold cosines (floats) and whose
`full_correct` is all ones, so `cascade.evaluate` returns the fidelity where it returns accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ovclip.policy.cascade import Trace, evaluate

Thresholds = dict[int, float | None]
STATISTIC = (
    "mean over images of cos(early-exit embedding, full-depth embedding), 1 at full depth; "
    "one-sided lower confidence bound mean - z*s/sqrt(n) on the held-out threshold split"
)


@dataclass(frozen=True)
class MinFidelity:
    """The fewest FLOPs whose fidelity (mean cosine to full depth) is >= `bound` at `confidence`."""

    bound: float
    confidence: float = 0.95

    def record(self) -> dict:
        return {"min_fidelity": self.bound, "confidence": self.confidence, "statistic": STATISTIC}


def fidelity_trace(
    exits: list[int], score: dict[int, np.ndarray], cosine: dict[int, np.ndarray], flops: dict[int, float], n: int
) -> Trace:
    """A cascade trace whose 'correctness' is each exit's cosine to full depth (1.0 at full depth)."""
    first = next(iter(cosine.values())) if cosine else np.zeros(0)
    cos = {L: np.asarray(cosine[L], np.float64) for L in exits}
    return Trace(list(exits), score, cos, np.ones(len(first), np.float64), flops, n)


def lower_bound(total: np.ndarray, total_sq: np.ndarray, n: int, confidence: float) -> np.ndarray:
    """One-sided lower confidence bound on the mean from the sums of the values and of their squares."""
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0) * n / max(n - 1, 1)
    return mean - NormalDist().inv_cdf(confidence) * np.sqrt(var / n)


def fidelity_bound(cosines: np.ndarray, confidence: float = 0.95) -> float:
    """`lower_bound` of one cascade's per-image cosines."""
    c = np.asarray(cosines, np.float64)
    return float(lower_bound(c.sum(), (c * c).sum(), len(c), confidence))


def grid_sums(trace: Trace, grids: dict[int, list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every combination of thresholds (one axis per exit, in grid order): the summed cosine, summed
    squared cosine and summed FLOPs over the trace's images. A sample leaves at exit j when it passed exits
    0..j-1 and reaches threshold j; the "passed so far" masks of each prefix combination are the rows of a
    matrix, so each exit adds one matrix product over samples."""
    exits, n = trace.exits, len(trace)
    shape = tuple(len(grids[e]) for e in exits)

    def weights(cos: np.ndarray, flops: float) -> np.ndarray:  # (N, 3)
        c = np.asarray(cos, np.float64)
        return np.stack([c, c * c, np.full(n, flops)], axis=1)

    total = np.zeros((*shape, 3))
    prefix = np.ones((1, n))
    w_full = weights(np.ones(n), trace.flops[trace.num_layers])
    for j, e in enumerate(exits):
        m = np.stack([np.zeros(n, bool) if t is None else trace.score[e] >= t for t in grids[e]]).astype(np.float64)
        w = weights(trace.correct[e], trace.flops[e])
        part = prefix @ (m[:, :, None] * w[None]).transpose(1, 0, 2).reshape(n, -1)
        total += part.reshape(*shape[: j + 1], *([1] * (len(exits) - j - 1)), 3)
        if j == len(exits) - 1:
            rest = prefix @ ((1.0 - m)[:, :, None] * w_full[None]).transpose(1, 0, 2).reshape(n, -1)
            total += rest.reshape(*shape, 3)
        else:
            prefix = (prefix[:, None, :] * (1.0 - m)[None, :, :]).reshape(-1, n)
    if not exits:
        total += prefix @ w_full
    return total[..., 0], total[..., 1], total[..., 2]


MAX_CELLS = 100_000  # threshold combinations evaluated at once; larger grids: coarse grid, then coordinate ascent

Key = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (sum cos, sum cos^2, sum FLOPs) -> key


def _thin(values: list, m: int) -> list:
    """'never' (None) and `m - 1` evenly spaced entries of one exit's threshold grid."""
    rest = [v for v in values if v is not None]
    keep = np.unique(np.linspace(0, len(rest) - 1, max(1, m - 1)).round().astype(int)) if rest else []
    return [None, *[rest[i] for i in keep]]


def _sums(trace: Trace, t: Thresholds) -> tuple[float, float, float]:
    _, fl, per = evaluate(trace, t)
    return float(per.sum()), float((per * per).sum()), fl * len(trace)


def _search(trace: Trace, grids: dict[int, list], key: Key) -> tuple[Thresholds, float, float]:
    """The thresholds with the largest `key` (-inf: infeasible): every combination where there are at most
    MAX_CELLS, else the best of a coarser grid refined by coordinate ascent over the full one (3 sweeps)."""
    exits = trace.exits
    m = max(2, int(MAX_CELLS ** (1 / max(1, len(exits)))))
    coarse = (
        grids if int(np.prod([len(grids[e]) for e in exits])) <= MAX_CELLS else {e: _thin(grids[e], m) for e in exits}
    )
    k = key(*grid_sums(trace, coarse))
    idx = np.unravel_index(int(np.argmax(k)), k.shape)
    t = {e: coarse[e][i] for e, i in zip(exits, idx, strict=True)}
    if coarse is not grids:
        best = float(key(*map(np.asarray, _sums(trace, t))))
        for _ in range(3):
            for e in exits:
                for v in grids[e]:
                    cand = {**t, e: v}
                    score = float(key(*map(np.asarray, _sums(trace, cand))))
                    if score > best:
                        best, t = score, cand
    fid, fl, _ = evaluate(trace, t)
    return t, fid, fl


def for_min_fidelity(
    trace: Trace, grids: dict[int, list], bound: float, confidence: float = 0.95
) -> tuple[Thresholds, float, float]:
    """Fewest FLOPs whose fidelity lower bound reaches `bound` (ties: the more faithful). 'Never exit' has
    fidelity 1 and is always allowed, so there is always an answer. Returns (thresholds, fidelity, mean FLOPs)."""
    n = len(trace)

    def key(total, total_sq, flops):
        ok = (lower_bound(total, total_sq, n, confidence) >= bound) | (total >= n - 1e-9)
        return np.where(ok, -flops + 1e-6 * total, -np.inf)

    return _search(trace, grids, key)


def for_fidelity_budget(trace: Trace, grids: dict[int, list], budget: float) -> tuple[Thresholds, float, float]:
    """Most faithful thresholds whose mean FLOPs stay within `budget` x full depth (ties: fewer FLOPs)."""
    n, full = len(trace), trace.flops[trace.num_layers]

    def key(total, total_sq, flops):
        return np.where(flops / n <= budget * full + 1e-6, total - 1e-9 * flops / full, -np.inf)

    return _search(trace, grids, key)
