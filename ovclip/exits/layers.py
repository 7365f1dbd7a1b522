"""Where exits can go: the candidate blocks (the paper's 8..11 of 12, scaled, or every block from 2 on), and the
quantization noise measured at each (INR, NSR) with the INR pruning that thins them. Needs no labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ovclip.exits.config import Placement
from ovclip.exits.features import Features
from ovclip.export.stages import PAPER_EXITS_12, parse_exits
from ovclip.policy.inr import inr, nsr, prune


def default_candidates(n: int) -> list[int]:
    """The paper's candidate blocks 8..11 of 12 (block 9 is the one its pruning removes), scaled."""
    lo, hi = min(PAPER_EXITS_12), max(PAPER_EXITS_12)
    return sorted({max(1, min(n - 1, round(b * n / 12))) for b in range(lo, hi + 1)})


def label_free_candidates(n: int) -> list[int]:
    """Every block of the second half but the last (6..11 of 12): heads distilled to the final embedding stay
    close to it from mid-depth on (built-in model: mean cosine 0.976 after block 6), so the paper's 8..11 would
    leave the cheapest exits out."""
    return list(range(max(1, n // 2), n))


def candidate_exits(
    exits: str | list[int] | None, placement: Placement, n_layers: int, labelled: bool = True
) -> tuple[list[int], bool]:
    """The blocks heads are trained after, and whether they are fixed (given: no pruning, no dropping)."""
    fixed = exits is not None and exits != "default"
    if placement == "auto":
        return list(range(2, n_layers)), fixed
    if fixed:
        return parse_exits(exits, n_layers), fixed
    return (default_candidates(n_layers) if labelled else label_free_candidates(n_layers)), fixed


@dataclass
class LayerDiagnostics:
    """Quantization noise at each candidate exit (on the head split) and the pruning it leads to."""

    candidates: list[int]
    inr: dict[int, float]
    nsr: dict[int, float]  # where the block before is known
    kept: list[int]
    pruned: list[int]
    kappa: float | None  # None: candidates were given, nothing pruned

    @classmethod
    def measure(
        cls, feats: Features, candidates: list[int], split: np.ndarray, kappa: float | None
    ) -> LayerDiagnostics:
        fp, q = feats.fp32_pooled, feats.pooled
        inrs = {L: inr(fp[L][split], q[L][split]) for L in candidates}
        nsrs = {L: nsr(fp[L - 1][split], fp[L][split], q[L][split]) for L in candidates if (L - 1) in fp}
        kept, pruned = (candidates, []) if kappa is None else prune(inrs, kappa)
        return cls(candidates, inrs, nsrs, kept, pruned, kappa)

    def describe(self) -> str:
        values = ", ".join(f"{L}: {v:.1f}" for L, v in self.inr.items())
        return f"INR per candidate exit: {values}" + (
            f"; pruned (kappa {self.kappa}): {self.pruned}" if self.pruned else ""
        )

    def record(self) -> dict:
        return {
            "candidates": self.candidates,
            "inr": {str(k): v for k, v in self.inr.items()},
            "nsr": {str(k): v for k, v in self.nsr.items()},
            "pruned": self.pruned,
        }
