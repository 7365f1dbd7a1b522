"""Gates, exit placement and thresholds, chosen on the calibration splits from the trained heads' outputs.

`ExitCalibration` holds what every choice reads (each candidate exit's embeddings, class scores, SAV and
correctness on all calibration images; the gate and threshold splits) and fits each exit's gate once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ovclip.exits.config import ExitBuildConfig
from ovclip.exits.gate_fit import select_gate
from ovclip.exits.thresholds import MaxDrop, Thresholds, choose_thresholds, drop_upper_bound, for_budget, grid
from ovclip.policy.cascade import Trace, evaluate, exit_layers
from ovclip.policy.flops import flops_to_exit
from ovclip.policy.rules import PAPER_GATE_FEATURES, RULES, ExitPolicy, Gate, Rule
from ovclip.policy.trace import exit_scores
from ovclip.progress import Progress, note

PARETO_BUDGETS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4)


@dataclass
class ExitOutputs:
    """Every candidate exit's head outputs on all calibration images, and full depth's correctness."""

    embeddings: dict[int, np.ndarray]  # (N, E) normalised head embeddings
    scores: dict[int, np.ndarray]  # (N, C) logit_scale x cosine to the class text embeddings
    correct: dict[int, np.ndarray]  # (N,) this exit's top-1 is the label
    sav: dict[int, np.ndarray]  # (N,) spatial-activation variance
    full_correct: np.ndarray  # (N,) INT8 full depth's top-1 is the label


Choice = tuple[Thresholds, float, float, Trace]  # thresholds, accuracy, mean FLOPs, the trace they were chosen on


class ExitCalibration:
    def __init__(
        self,
        outputs: ExitOutputs,
        gate_split: np.ndarray,
        threshold_split: np.ndarray,
        vision: Mapping,
        embedding_dim: int,
        num_classes: int,
        cfg: ExitBuildConfig,
    ):
        self.out, self.gate_split, self.threshold_split = outputs, gate_split, threshold_split
        self.vision, self.embedding_dim, self.num_classes, self.cfg = vision, embedding_dim, num_classes, cfg
        self._gates: dict[tuple[int, int | None], tuple[Gate, dict[str, float]]] = {}

    # -- gates ---------------------------------------------------------------------------------------
    def gate(self, layer: int, previous: int | None) -> tuple[Gate, dict[str, float]]:
        """Exit `layer`'s gate when the exit before it is `previous` (agreement features compare with its
        outputs), and the cross-validated AUC of every candidate feature set (recorded in either mode)."""
        if (layer, previous) not in self._gates:
            g, o = self.gate_split, self.out
            context = {"emb": o.embeddings[layer][g]}
            if previous is not None:
                context |= {"prev": o.embeddings[previous][g], "prev_scores": o.scores[previous][g]}
            fixed = PAPER_GATE_FEATURES if self.cfg.gate_features == "paper" else None
            self._gates[layer, previous] = select_gate(
                o.scores[layer][g], o.sav[layer][g], o.correct[layer][g], features=fixed, **context
            )
        return self._gates[layer, previous]

    def gates(self, layers: list[int]) -> dict[int, Gate]:
        return {L: self.gate(L, layers[j - 1] if j else None)[0] for j, L in enumerate(layers)}

    def gate_aucs(self, layers: list[int]) -> dict[int, dict[str, float]]:
        return {L: self.gate(L, layers[j - 1] if j else None)[1] for j, L in enumerate(layers)}

    # -- traces and thresholds -------------------------------------------------------------------------
    def trace(self, rule: Rule, layers: list[int]) -> Trace:
        """The cascade under `rule` with exits `layers`, on the threshold split."""
        idx, o = self.threshold_split, self.out
        as_rule = ExitPolicy(rule, list(layers), {}, {}, self.gates(layers) if rule == "gate" else {})
        score = exit_scores(
            as_rule,
            {L: o.scores[L][idx] for L in layers},
            {L: o.sav[L][idx] for L in layers},
            {L: o.embeddings[L][idx] for L in layers},
        )
        n = self.vision["num_layers"]
        flops = {
            L: float(flops_to_exit(self.vision, self.embedding_dim, L, layers, self.num_classes)) for L in [*layers, n]
        }
        return Trace(list(layers), score, {L: o.correct[L][idx] for L in layers}, o.full_correct[idx], flops, n)

    def choose(self, rule: Rule, layers: list[int], points: int = 25) -> Choice:
        """Thresholds meeting the configured objective (the agreement rule never exits at its first exit)."""
        tr = self.trace(rule, layers)
        grids = {
            L: ([None] if (rule == "agreement" and j == 0) else grid(tr.score[L], points)) for j, L in enumerate(layers)
        }
        t, acc, fl = choose_thresholds(tr, grids, self.cfg.objective)
        return t, acc, fl, tr

    # -- placement -------------------------------------------------------------------------------------
    def best_subset(self, candidates: list[int]) -> list[int]:
        """Placement 'auto': of every subset of up to `max_auto_exits` candidates, the one the objective
        prefers (most accurate within the budget, or fewest FLOPs within the drop), on a coarse grid."""
        best = None
        for k in range(1, self.cfg.max_auto_exits + 1):
            for subset in itertools.combinations(candidates, k):
                _, acc, fl, _ = self.choose("gate", list(subset), points=9)
                key = (-fl, acc) if isinstance(self.cfg.objective, MaxDrop) else (acc, -fl)
                if best is None or key > best[0]:
                    best = (key, list(subset))
        assert best is not None
        return best[1]

    def drop_idle_exits(self, layers: list[int], progress: Progress | None = None) -> list[int]:
        return drop_idle_exits(layers, lambda ls: self.choose("gate", ls), self.cfg.min_exit_share, progress)

    # -- what the manifest records ---------------------------------------------------------------------
    def rule_summaries(self, layers: list[int]) -> tuple[dict[str, Thresholds], dict[str, dict]]:
        """Per rule: its thresholds, and the figures measured on the threshold split with them."""
        thresholds, summary = {}, {}
        for rule in (r for r in RULES if r != "fidelity"):  # fidelity: ovclip.exits.label_free
            t, acc, fl, tr = self.choose(rule, layers)
            _, _, exit_correct = evaluate(tr, t)
            summary[rule] = {
                "thresholds": {str(k): v for k, v in t.items()},
                "calibration_top1": acc,
                "calibration_full_depth_top1": float(tr.full_correct.mean()),
                "calibration_flops_saving": 1 - fl / tr.flops[tr.num_layers],
                "drop_upper_bound_95": drop_upper_bound(exit_correct, tr.full_correct, self.cfg.confidence),
            }
            thresholds[rule] = t
        return thresholds, summary

    def pareto(self, layers: list[int]) -> list[dict]:
        """Gate and confidence thresholds per FLOPs budget of `PARETO_BUDGETS` (budgets no thresholds meet
        are left out)."""
        traces = {rule: self.trace(rule, layers) for rule in ("gate", "confidence")}
        points = []
        for budget in PARETO_BUDGETS:
            row: dict = {"budget": budget}
            for rule, tr in traces.items():
                t, acc, fl = for_budget(tr, {L: grid(tr.score[L]) for L in layers}, budget)
                row[rule] = {
                    "thresholds": {str(k): v for k, v in t.items()},
                    "calibration_top1": acc,
                    "calibration_flops_saving": 1 - fl / tr.flops[tr.num_layers],
                }
            if all(row[r]["calibration_flops_saving"] >= 1 - budget - 1e-9 for r in traces):
                points.append(row)
        return points


def drop_idle_exits(
    layers: list[int], choose: Callable[[list[int]], Choice], min_share: float, progress: Progress | None = None
) -> list[int]:
    """Remove, one at a time, the exit the calibrated policy sends the fewest samples to while that share
    is below `min_share`; thresholds are chosen again after each removal."""
    layers = list(layers)
    while len(layers) > 1:
        t, _, _, tr = choose(layers)
        taken = exit_layers(tr, t)
        share = {L: float(np.mean(taken == L)) for L in layers}
        idle = min(layers, key=lambda L: share[L])
        if share[idle] >= min_share:
            break
        note(
            progress,
            f"exit after block {idle} takes {100 * share[idle]:.1f}% of samples (< {100 * min_share:.0f}%): dropped",
        )
        layers.remove(idle)
    return layers
