"""The offline batch: how many images per inference call make a configuration fastest on this device.

A full-depth INT8 tower runs about as fast at 8 images per call as at 64 on a CPU; early exit does not. After the
first exit most of a batch has left, and the later blocks run on what is left: the ~24 images left of 64 keep a
CPU's matrix kernels far busier per image than the ~3 left of 8 (`benchmarks/RESULTS.md`, "The offline batch,
measured per device"). So the
batch is measured, like the precision: each candidate timed in rotating rounds (`ovclip.bench.rounds`) on the
same images, and the smallest batch within `tolerance` of the fastest median kept (less memory and latency for
the same throughput). `ovclip deploy` records the choice in the manifest; `ovclip bench` reuses a choice
recorded on the same device and otherwise measures one before it times anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ovclip.bench.rounds import rotating_rounds, summary
from ovclip.bench.throughput import measure
from ovclip.errors import OvclipError

CANDIDATES = (8, 16, 32, 64)
TOLERANCE = 0.03  # keep the smallest batch whose median is within 3 % of the fastest


@dataclass(frozen=True)
class BatchChoice:
    batch: int
    chosen_by: str  # "measured" or "recorded ..." or "given"
    throughput: dict[int, dict]  # batch -> `ovclip.bench.rounds.summary` of img/s over the rounds (measured only)

    def as_dict(self) -> dict:
        return {
            "batch": self.batch,
            "chosen_by": self.chosen_by,
            "throughput_fps": {str(b): s for b, s in self.throughput.items()},
        }


def rebatch(batches: Sequence[np.ndarray], batch: int) -> list[np.ndarray]:
    """The same images in calls of `batch` (a last short call is dropped; fewer images than `batch`: one call)."""
    px = np.concatenate(list(batches))
    out = [np.ascontiguousarray(px[i : i + batch]) for i in range(0, len(px) - batch + 1, batch)]
    return out or [px]


def pick_batch(medians: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest batch whose median throughput is within `tolerance` of the best."""
    if not medians:
        raise OvclipError("no batch was measured")
    best = max(medians.values())
    return min(b for b, m in medians.items() if m >= (1.0 - tolerance) * best)


def tune_batch(
    run: Callable[[np.ndarray], object],
    images: Sequence[np.ndarray],
    *,
    nireq: int,
    seconds: float,
    rounds: int = 3,
    candidates: Sequence[int] = CANDIDATES,
    tolerance: float = TOLERANCE,
    on_result: Callable[[int, int, float], None] | None = None,
) -> BatchChoice:
    """Time `run` at every candidate batch (at most the number of images) over the same `images`, in rotating
    rounds of `seconds` each, and pick one (`pick_batch`)."""
    n = sum(len(b) for b in images)
    sizes = sorted({min(b, n) for b in candidates if b >= 1})
    if not sizes:
        raise OvclipError(f"candidates={list(candidates)}: give positive batch sizes", params="candidates")
    pools = {b: rebatch(images, b) for b in sizes}
    runs = {b: (lambda b=b: measure(run, pools[b], nireq=nireq, seconds=seconds).throughput_fps) for b in sizes}
    got = rotating_rounds(runs, rounds, on_result=on_result)
    stats = {b: summary(v) for b, v in got.items()}
    chosen = pick_batch({b: s["median"] for b, s in stats.items()}, tolerance)
    return BatchChoice(chosen, "measured", stats)
