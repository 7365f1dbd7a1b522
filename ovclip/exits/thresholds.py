"""Per-exit thresholds chosen on calibration data: most accurate under a FLOPs budget, or fastest whose
accuracy drop against full depth stays below D with 95% confidence."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from ovclip.exits.cascade import Trace, evaluate

Thresholds = dict[int, float | None]


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


def _search(
    trace: Trace,
    grids: dict[int, list],
    key: Callable[[float, float, np.ndarray], tuple | None],
    max_full: int = 60_000,
) -> tuple[Thresholds, float, float]:
    """Best thresholds by `key` (larger is better, None = infeasible): full grid when small, else
    coordinate ascent from 'never exit' (3 sweeps)."""
    exits = trace.exits
    size = int(np.prod([len(grids[e]) for e in exits])) if exits else 1
    best: tuple | None = None
    best_t: Thresholds = {e: None for e in exits}
    if size <= max_full:
        for combo in itertools.product(*[grids[e] for e in exits]):
            t = dict(zip(exits, combo, strict=True))
            acc, fl, corr = evaluate(trace, t)
            k = key(acc, fl, corr)
            if k is not None and (best is None or k > best):
                best, best_t = k, t
    else:
        t = dict(best_t)
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
            best_t = t
    acc, fl, _ = evaluate(trace, best_t)
    return best_t, acc, fl


def for_budget(trace: Trace, grids: dict[int, list], budget: float) -> tuple[Thresholds, float, float]:
    """Most accurate thresholds whose mean FLOPs <= budget x full depth (ties: fewer FLOPs)."""
    full = trace.flops[trace.num_layers]

    def key(acc, fl, corr):
        return (round(acc, 9), -fl) if fl <= budget * full + 1e-6 else None

    return _search(trace, grids, key)


def for_max_drop(
    trace: Trace, grids: dict[int, list], max_drop: float, confidence: float = 0.95
) -> tuple[Thresholds, float, float]:
    """Fewest FLOPs whose upper confidence bound on the accuracy drop stays below `max_drop` (a fraction)."""

    def key(acc, fl, corr):
        if drop_upper_bound(corr, trace.full_correct, confidence) >= max_drop:
            return None
        return (-round(fl, 3), acc)

    return _search(trace, grids, key)
