"""Simulate an exit cascade offline: which exit each sample takes, accuracy and FLOPs that follow.

Used to calibrate thresholds (on the calibration split) and to draw Pareto curves (on evaluation data):
run the full depth once with every head, then try any thresholds without running the model again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Trace:
    """Per-sample quantities at each exit and at full depth."""

    exits: list[int]
    score: dict[int, np.ndarray]  # exit -> (N,) readiness the rule compares with its threshold
    correct: dict[int, np.ndarray]  # exit -> (N,) bool, this exit's prediction right
    full_correct: np.ndarray  # (N,) bool
    flops: dict[int, float]  # exit (and num_layers) -> FLOPs spent by a sample leaving there
    num_layers: int

    def __len__(self) -> int:
        return len(self.full_correct)


def exit_layers(trace: Trace, thresholds: dict[int, float | None]) -> np.ndarray:
    """The block after which each sample leaves: the first exit whose score reaches its threshold."""
    n = len(trace)
    out = np.full(n, trace.num_layers, np.int32)
    left = np.ones(n, bool)
    for e in trace.exits:
        tau = thresholds.get(e)
        if tau is None:
            continue
        go = left & (trace.score[e] >= tau)
        out[go] = e
        left &= ~go
    return out


def evaluate(trace: Trace, thresholds: dict[int, float | None]) -> tuple[float, float, np.ndarray]:
    """(accuracy, mean FLOPs, per-sample correctness) of the cascade under `thresholds`."""
    layers = exit_layers(trace, thresholds)
    correct = trace.full_correct.copy()
    flops = np.full(len(trace), trace.flops[trace.num_layers], float)
    for e in trace.exits:
        m = layers == e
        correct[m] = trace.correct[e][m]
        flops[m] = trace.flops[e]
    return float(correct.mean()), float(flops.mean()), correct
