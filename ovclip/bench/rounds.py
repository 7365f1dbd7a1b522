"""Rotating rounds: every configuration is timed once per round, in an order that rotates from round to round, so
a slow spell of a shared host hits all of them alike; a ratio of two configurations is taken within each round
and its median reported. `ovclip bench` and the scripts in benchmarks/ time through this one function."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from ovclip.errors import OvclipError

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def rotating_rounds(
    runs: Mapping[K, Callable[[], T]],
    rounds: int,
    on_result: Callable[[int, K, T], None] | None = None,
) -> dict[K, list[T]]:
    """Call every runner once per round for `rounds` rounds; round r starts at the r-th runner (mod their
    number) and wraps around. Returns each runner's results in round order."""
    if rounds < 1:
        raise OvclipError(f"rounds={rounds}: must be at least 1", params="rounds")
    keys = list(runs)
    got: dict[K, list[T]] = {k: [] for k in keys}
    for r in range(rounds):
        s = r % len(keys) if keys else 0
        for k in keys[s:] + keys[:s]:
            res = runs[k]()
            got[k].append(res)
            if on_result is not None:
                on_result(r, k, res)
    return got


def summary(values: Sequence[float]) -> dict:
    """Median and spread (min, max, quartiles) of one figure over the rounds, with the per-round values."""
    v = np.asarray(values, np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {
        "median": float(med),
        "min": float(v.min()),
        "max": float(v.max()),
        "q1": float(q1),
        "q3": float(q3),
        "runs": [float(x) for x in v],
    }


def ratio_within_rounds(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """numerator[r] / denominator[r] for each round r, summarised (`summary`)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"{len(numerator)} rounds against {len(denominator)}")
    return summary([a / b for a, b in zip(numerator, denominator, strict=True)])
