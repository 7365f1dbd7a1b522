"""Which measured configuration to deploy: the fastest whose accuracy stays within a tolerance of FP32.

Pure: it reads measurements (img/s per rotating round, zero-shot top-1 or embedding fidelity on calibration
images) and returns the choice with the reasons, as the deployment folder's manifest records them.
Accuracy is zero-shot top-1 where the calibration images have labels; without labels, the mean cosine of each
image's embedding to FP32's (full depth, f32) on the same images. Random weights have neither: the choice is
then by speed alone, and the record says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ovclip.errors import OvclipError

Metric = Literal["top1", "cosine", "none"]


@dataclass(frozen=True)
class Tolerance:
    top1_points: float = 0.5  # zero-shot top-1 at most this many percentage points below FP32
    cosine: float = 0.02  # without labels: mean cosine to FP32's embeddings at least 1 - this

    def __post_init__(self) -> None:
        if not 0 <= self.top1_points < 100:
            raise OvclipError(f"tolerance={self.top1_points}: give accuracy points, e.g. 0.5", params="tolerance")
        if not 0 <= self.cosine < 2:
            raise OvclipError(
                f"fidelity_tolerance={self.cosine}: give a drop of mean cosine, e.g. 0.02", params="fidelity_tolerance"
            )

    def describe(self, metric: Metric) -> str:
        if metric == "top1":
            return f"{self.top1_points:g} points of zero-shot top-1"
        if metric == "cosine":
            return f"{self.cosine:g} of mean cosine to FP32's embeddings"
        return "no accuracy check (random weights)"


@dataclass(frozen=True)
class Measured:
    """One configuration as measured on the target device."""

    name: str  # e.g. "int8-ee"
    folder: str  # which candidate folder it runs ("float", "int8")
    precision: str  # what the plugin executed float layers in (f32, bf16, f16)
    early_exit: bool
    throughput: tuple[float, ...]  # img/s, one per rotating round (the same rounds for every configuration)
    top1: float | None = None  # zero-shot top-1 in [0, 1] (labelled calibration images)
    cosine: float | None = None  # mean cosine to FP32's full-depth embeddings
    reference: bool = False  # FP32 IR in f32 at full depth: what the tolerance is measured from

    @property
    def median(self) -> float:
        return float(np.median(self.throughput))


@dataclass
class Decision:
    chosen: Measured
    metric: Metric
    tolerance: Tolerance
    eligible: dict[str, bool]  # name -> within tolerance
    shortfall: dict[str, float | None]  # name -> top-1 points (or cosine) below FP32
    speedup: dict[str, float]  # name -> median over rounds of chosen / that configuration, within each round
    reason: str


def metric_of(reference: Measured) -> Metric:
    if reference.top1 is not None:
        return "top1"
    return "cosine" if reference.cosine is not None else "none"


def shortfall(m: Measured, reference: Measured, metric: Metric) -> float | None:
    """How far `m` is below the reference: top-1 points, or mean cosine (None: not measured)."""
    if metric == "top1":
        return None if m.top1 is None else 100 * (reference.top1 - m.top1)
    if metric == "cosine":
        return None if m.cosine is None else reference.cosine - m.cosine
    return 0.0


def within(short: float | None, metric: Metric, tolerance: Tolerance) -> bool:
    if short is None:
        return False
    limit = {"top1": tolerance.top1_points, "cosine": tolerance.cosine, "none": 0.0}[metric]
    return short <= limit + 1e-9


def decide(measured: Sequence[Measured], tolerance: Tolerance = Tolerance()) -> Decision:
    """The fastest configuration (median img/s over the rounds) within `tolerance` of the reference (FP32, f32,
    full depth; always within, so there is always a choice)."""
    refs = [m for m in measured if m.reference]
    if len(refs) != 1:
        raise OvclipError(f"precision auto needs exactly one FP32 f32 full-depth measurement (got {len(refs)})")
    ref = refs[0]
    rounds = {len(m.throughput) for m in measured}
    if len(rounds) != 1 or 0 in rounds:
        raise ValueError(f"every configuration needs the same rounds (got {sorted(rounds)})")
    metric = metric_of(ref)
    short = {m.name: shortfall(m, ref, metric) for m in measured}
    ok = {m.name: within(short[m.name], metric, tolerance) for m in measured}
    chosen = max((m for m in measured if ok[m.name]), key=lambda m: m.median)
    speedup = {
        m.name: float(np.median(np.divide(chosen.throughput, m.throughput))) for m in measured if m is not chosen
    }
    reason = _reason(chosen, measured, ok, short, metric, speedup)
    return Decision(chosen, metric, tolerance, ok, short, speedup, reason)


def _reason(chosen: Measured, measured, ok: dict, short: dict, metric: Metric, speedup: dict) -> str:
    others = sorted((m for m in measured if ok[m.name] and m is not chosen), key=lambda m: -m.median)
    text = f"{chosen.name} ({chosen.precision}) is the fastest within tolerance: {chosen.median:.1f} img/s"
    if others:
        text += f", {speedup[others[0].name]:.3f}x {others[0].name} (the next fastest within tolerance)"
    unit = {"top1": "points of top-1", "cosine": "of mean cosine", "none": ""}[metric]
    out = [
        f"{m.name} ({'not measured' if short[m.name] is None else f'{short[m.name]:.3g} {unit}'} below FP32)"
        for m in measured
        if not ok[m.name]
    ]
    if out:
        text += "; out of tolerance: " + ", ".join(out)
    return text


def decision_record(d: Decision, measured: Sequence[Measured]) -> dict:
    """What the manifest records: every configuration's figures, the tolerance, the choice and why."""
    return {
        "metric": d.metric,
        "tolerance": {"top1_points": d.tolerance.top1_points, "cosine": d.tolerance.cosine},
        "tolerance_applied": d.tolerance.describe(d.metric),
        "chosen": d.chosen.name,
        "reason": d.reason,
        "candidates": [
            {
                "name": m.name,
                "folder": m.folder,
                "executed_precision": m.precision,
                "early_exit": m.early_exit,
                "throughput_fps_median": m.median,
                "throughput_fps_rounds": list(m.throughput),
                "top1": m.top1,
                "mean_cosine_to_fp32": m.cosine,
                "below_fp32": d.shortfall[m.name],
                "within_tolerance": d.eligible[m.name],
                "chosen_speedup": d.speedup.get(m.name),
                "reference": m.reference,
            }
            for m in measured
        ],
    }
