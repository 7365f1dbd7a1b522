"""Per-exit thresholds chosen on calibration data: most accurate under a FLOPs budget, or fastest whose
accuracy drop against full depth stays below D with 95% confidence (the two `Objective`s)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ovclip.policy.cascade import Trace, evaluate

Thresholds = dict[int, float | None]


@dataclass(frozen=True)
class FlopsBudget:
    """The most accurate thresholds whose mean FLOPs stay within `fraction` of full depth."""

    fraction: float

    def record(self) -> dict:
        return {"flops_budget": self.fraction}


@dataclass(frozen=True)
class MaxDrop:
    """The fewest FLOPs whose accuracy drop against full depth stays below `points` at `confidence`."""

    points: float
    confidence: float = 0.95

    def record(self) -> dict:
        return {"max_drop_points": self.points, "confidence": self.confidence}


Objective = FlopsBudget | MaxDrop


def grid(scores: np.ndarray, points: int = 25) -> list[float | None]:
    """Candidate thresholds for one exit: `points` quantiles of its scores on calibration data, and 'never'."""
    qs = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, points)))
    return [None, *[float(q) for q in qs]]


def binomial_bounds(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson two-sided interval for k successes in n trials."""
    from scipy.stats import beta

    a = 1 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def drop_upper_bound(ee_correct: np.ndarray, full_correct: np.ndarray, confidence: float = 0.95) -> float:
    """Upper confidence bound on accuracy(full) - accuracy(EE).

    drop = P(loss) - P(rescue); with Clopper-Pearson bounds at 1-(1-c)/2 each (a union bound),
    P(loss) <= hi and P(rescue) >= lo hold together with probability >= c.
    """
    n = len(ee_correct)
    loss = int(np.sum(full_correct & ~ee_correct))
    rescue = int(np.sum(ee_correct & ~full_correct))
    c2 = 1 - (1 - confidence) / 2
    hi_loss = binomial_bounds(loss, n, 2 * c2 - 1)[1]
    lo_rescue = binomial_bounds(rescue, n, 2 * c2 - 1)[0]
    return hi_loss - lo_rescue


@dataclass
class GridResult:
    """Outcome of every threshold combination (one axis per exit, in grid order)."""

    correct: np.ndarray  # number of right predictions
    flops: np.ndarray  # summed FLOPs
    loss: np.ndarray  # EE wrong where full depth is right
    rescue: np.ndarray  # EE right where full depth is wrong
    n: int


def evaluate_grid(trace: Trace, grids: dict[int, list]) -> GridResult:
    """All combinations at once. A sample leaves at exit j when it passed exits 0..j-1 and reaches
    threshold j; the "passed so far" masks of every prefix combination are kept as rows of a matrix, so
    each exit's totals are one matrix product over samples."""
    exits = trace.exits
    k = len(exits)
    n = len(trace)
    full = trace.full_correct
    shape = tuple(len(grids[e]) for e in exits)

    def weights(right: np.ndarray, flops: float) -> np.ndarray:  # (N, 4): correct, flops, loss, rescue
        return np.stack([right, np.full(n, flops), ~right & full, right & ~full], axis=1).astype(np.float64)

    total = np.zeros((*shape, 4))
    prefix = np.ones((1, n))  # rows: combinations of thresholds of the exits before j
    w_full = weights(full, trace.flops[trace.num_layers])
    for j, e in enumerate(exits):
        m = np.stack([np.zeros(n, bool) if t is None else trace.score[e] >= t for t in grids[e]]).astype(np.float64)
        w = weights(trace.correct[e], trace.flops[e])
        part = prefix @ (m[:, :, None] * w[None]).transpose(1, 0, 2).reshape(n, -1)  # (M, Gj*4)
        total += part.reshape(*shape[: j + 1], *([1] * (k - j - 1)), 4)
        if j == k - 1:  # samples that pass the last exit too run to full depth
            rest = prefix @ ((1.0 - m)[:, :, None] * w_full[None]).transpose(1, 0, 2).reshape(n, -1)
            total += rest.reshape(*shape, 4)
        else:
            prefix = (prefix[:, None, :] * (1.0 - m)[None, :, :]).reshape(-1, n)
    if k == 0:
        total += (prefix @ w_full).reshape(4)
    return GridResult(total[..., 0], total[..., 1], total[..., 2], total[..., 3], n)


def _pick(grids: dict[int, list], exits: list[int], index: tuple[int, ...]) -> Thresholds:
    return {e: grids[e][i] for e, i in zip(exits, index, strict=True)}


def _search(
    trace: Trace, grids: dict[int, list], key: Callable[[float, float, np.ndarray], tuple | None]
) -> tuple[Thresholds, float, float]:
    """Best thresholds by `key` (larger is better, None = infeasible) by coordinate ascent from 'never exit'
    (3 sweeps); used where the full grid is too large to evaluate at once."""
    exits = trace.exits
    t: Thresholds = {e: None for e in exits}
    acc, fl, corr = evaluate(trace, t)
    best = key(acc, fl, corr)
    for _ in range(3):
        for e in exits:
            for v in grids[e]:
                cand = {**t, e: v}
                acc, fl, corr = evaluate(trace, cand)
                k = key(acc, fl, corr)
                if k is not None and (best is None or k > best):
                    best, t = k, cand
    acc, fl, _ = evaluate(trace, t)
    return t, acc, fl


def _small(trace: Trace, grids: dict[int, list]) -> bool:
    return len(trace.exits) <= 3 and int(np.prod([len(grids[e]) for e in trace.exits])) <= 200_000


def _drop_bounds(g: GridResult, confidence: float) -> np.ndarray:
    """drop_upper_bound for every combination at once (vectorised Clopper-Pearson, same union bound)."""
    from scipy.stats import beta

    a = (1 - confidence) / 2  # each side at 1 - (1-c)/2, as in drop_upper_bound
    n = g.n
    loss, rescue = np.rint(g.loss), np.rint(g.rescue)
    with np.errstate(invalid="ignore"):
        hi = np.where(loss >= n, 1.0, beta.ppf(1 - a, loss + 1, np.maximum(n - loss, 1)))
        lo = np.where(rescue <= 0, 0.0, beta.ppf(a, np.maximum(rescue, 1), n - rescue + 1))
    return hi - lo


def for_budget(trace: Trace, grids: dict[int, list], budget: float) -> tuple[Thresholds, float, float]:
    """Most accurate thresholds whose mean FLOPs <= budget x full depth (ties: fewer FLOPs)."""
    full = trace.flops[trace.num_layers]
    if _small(trace, grids):
        g = evaluate_grid(trace, grids)
        feasible = g.flops / g.n <= budget * full + 1e-6
        score = np.where(feasible, g.correct - 1e-9 * g.flops / full, -np.inf)
        idx = np.unravel_index(int(np.argmax(score)), score.shape)
        t = _pick(grids, trace.exits, idx)
        acc, fl, _ = evaluate(trace, t)
        return t, acc, fl

    def key(acc, fl, corr):
        return (round(acc, 9), -fl) if fl <= budget * full + 1e-6 else None

    return _search(trace, grids, key)


def for_max_drop(
    trace: Trace, grids: dict[int, list], max_drop: float, confidence: float = 0.95
) -> tuple[Thresholds, float, float]:
    """Fewest FLOPs whose upper confidence bound on the accuracy drop stays below `max_drop` (a fraction)."""
    if _small(trace, grids):
        g = evaluate_grid(trace, grids)
        ok = _drop_bounds(g, confidence) < max_drop
        score = np.where(ok, -g.flops + 1e-6 * g.correct, -np.inf)
        idx = np.unravel_index(int(np.argmax(score)), score.shape)
        t = _pick(grids, trace.exits, idx)
        acc, fl, _ = evaluate(trace, t)
        return t, acc, fl

    def key(acc, fl, corr):
        if drop_upper_bound(corr, trace.full_correct, confidence) >= max_drop:
            return None
        return (-round(fl, 3), acc)

    return _search(trace, grids, key)


def choose_thresholds(trace: Trace, grids: dict[int, list], objective: Objective) -> tuple[Thresholds, float, float]:
    """The thresholds `objective` asks for: (thresholds, accuracy, mean FLOPs) on `trace`."""
    if isinstance(objective, MaxDrop):
        return for_max_drop(trace, grids, objective.points / 100, objective.confidence)
    return for_budget(trace, grids, objective.fraction)
