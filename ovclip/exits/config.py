"""What the exit calibration is asked for: the objective its thresholds meet, where exits go, how gates and
heads are fitted. One typed object from the caller (CLI or API) down to the threshold search."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from ovclip.data.prompts import TEMPLATE_SETS, TemplateSet
from ovclip.errors import OvclipError
from ovclip.exits.fidelity import MinFidelity
from ovclip.exits.heads import HeadTrainConfig
from ovclip.exits.rule_modes import EXIT_RULE_MODES, ExitRuleMode
from ovclip.exits.thresholds import FlopsBudget, MaxDrop, Objective

# "fixed": the given exits, or the default candidates thinned by INR pruning; "auto": every block from 2 on is
# a candidate and the best subset of up to `max_auto_exits` is chosen on calibration data.
Placement = Literal["fixed", "auto"]
# "paper": (confidence, margin, SAV) at every exit; "select": per exit the candidate set (the paper's, its
# subsets, agreement with the previous exit) with the best cross-validated AUC on the gate split.
GateFeatureMode = Literal["paper", "select"]
PLACEMENTS: tuple[str, ...] = get_args(Placement)
GATE_FEATURE_MODES: tuple[str, ...] = get_args(GateFeatureMode)
DEFAULT_BUDGET = 0.85
# The label-free rule's default bound: mean cosine of the early-exit embeddings to full depth (95% lower
# confidence bound on held-out calibration images). Chosen on the shipped calibration images (their labels used
# offline for this choice only; 6 re-drawn splits, distilled heads after blocks 6..11): zero-shot top-1 moved
# -1.12 points at 0.985, -0.48 at 0.99, -0.08 at 0.9925 (25% fewer FLOPs), +0.05 at 0.995 (19%).
DEFAULT_MIN_FIDELITY = 0.993


@dataclass(frozen=True)
class ExitBuildConfig:
    flops_budget: float | None = None  # fraction of full-depth FLOPs; default 0.85 when max_drop is unset
    max_drop: float | None = None  # accuracy points (0.5 = half a point) at `confidence`
    # label-free rule: least mean cosine of the early-exit embeddings to full depth (default 0.993; with no labels
    # and a `flops_budget` but no `min_fidelity`, the most faithful thresholds within the budget instead)
    min_fidelity: float | None = None
    placement: Placement = "fixed"
    kappa: float = 0.5  # INR pruning: drop a candidate below kappa x the mean INR
    max_auto_exits: int = 3
    confidence: float = 0.95
    head: HeadTrainConfig = field(default_factory=HeadTrainConfig)
    split: tuple[float, float, float] = (0.5, 1 / 6, 1 / 3)  # heads, gate, thresholds
    min_images: int = 600
    # An exit that few samples take costs a head, a gate and a stage boundary for every sample that passes
    # it (wall-clock overhead the FLOPs count hides): exits taken by less than this share are dropped.
    min_exit_share: float = 0.05
    # The default stays "paper": on the shipped model "select" ranks better but is not more accurate per
    # FLOPs budget (benchmarks/gate_vs_confidence.py, RESULTS.md).
    gate_features: GateFeatureMode = "paper"
    # The rule of the deployed class-score policy (`ovclip.exits.rule_select`): "auto" (None: the default, or
    # "select" when gate_features="select", its old spelling) picks on calibration data by cross-fitting.
    exit_rule: ExitRuleMode | None = None
    # Prompt templates of the class text embeddings the heads are trained against (`prompt_templates`):
    # "fashion-mnist" for the built-in calibration set, "generic" for other images.
    templates: TemplateSet = "fashion-mnist"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.flops_budget is not None and not 0 < self.flops_budget <= 1:
            raise OvclipError(
                f"flops_budget={self.flops_budget}: give a fraction of full depth in (0, 1]", params="flops_budget"
            )
        if self.max_drop is not None and not 0 < self.max_drop < 100:
            raise OvclipError(f"max_drop={self.max_drop}: give accuracy points, e.g. 0.5", params="max_drop")
        if self.min_fidelity is not None and not 0 < self.min_fidelity < 1:
            raise OvclipError(
                f"min_fidelity={self.min_fidelity}: give a mean cosine to full depth in (0, 1), e.g. 0.97",
                params="min_fidelity",
            )
        if self.flops_budget is not None and self.max_drop is not None:
            raise OvclipError("give `flops_budget` or `max_drop`, not both", params=("flops_budget", "max_drop"))
        if self.gate_features == "select" and self.exit_rule not in (None, "select"):
            raise OvclipError(
                f"gate_features='select' is exit_rule='select'; it cannot go with exit_rule={self.exit_rule!r}",
                params=("gate_features", "exit_rule"),
            )
        if self.exit_rule == "select":  # the gate path fits the CV-selected gates
            object.__setattr__(self, "gate_features", "select")
        for name, value, allowed in (
            ("exit_rule", self.rule_mode, EXIT_RULE_MODES),
            ("gate_features", self.gate_features, GATE_FEATURE_MODES),
            ("placement", self.placement, PLACEMENTS),
            ("templates", self.templates, TEMPLATE_SETS),
        ):
            if value not in allowed:
                raise OvclipError(f"{name}={value!r}: give {' or '.join(map(repr, allowed))}", params=name)

    @property
    def rule_mode(self) -> ExitRuleMode:
        """The exit rule asked for: `exit_rule`, else "select" for gate_features="select", else "auto"."""
        return self.exit_rule or ("select" if self.gate_features == "select" else "auto")

    @property
    def objective(self) -> Objective:
        """What the thresholds optimise: the fewest FLOPs within `max_drop`, else the best accuracy within the
        FLOPs budget (0.85 of full depth unless given)."""
        if self.max_drop is not None:
            return MaxDrop(self.max_drop, self.confidence)
        return FlopsBudget(self.flops_budget or DEFAULT_BUDGET)

    def label_free_objective(self, labelled: bool) -> MinFidelity | FlopsBudget:
        """What the label-free rule's thresholds meet: `min_fidelity` (default 0.993); on unlabeled calibration
        data a `flops_budget` given without `min_fidelity` asks for the most faithful thresholds within it."""
        if not labelled and self.flops_budget is not None and self.min_fidelity is None:
            return FlopsBudget(self.flops_budget)
        return MinFidelity(self.min_fidelity or DEFAULT_MIN_FIDELITY, self.confidence)


def split_calibration(n: int, cfg: ExitBuildConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the three disjoint calibration parts (heads, gate, thresholds), seeded by `cfg.seed`."""
    order = np.random.default_rng(cfg.seed).permutation(n)
    a = int(cfg.split[0] * n)
    b = a + int(cfg.split[1] * n)
    return order[:a], order[a:b], order[b:]


def check_calibration_size(calibration, cfg: ExitBuildConfig) -> None:
    """Early exit needs `cfg.min_images` readable calibration images: say how many there are (and how many were
    unreadable) and what to do. An explicit class-score exit rule needs labels."""
    if getattr(calibration, "labels", None) is None and cfg.rule_mode != "auto":
        raise OvclipError(
            f"exit_rule={cfg.rule_mode!r} chooses among class-score rules, which need labelled calibration images; "
            "unlabeled images get the label-free fidelity rule (its bound: `min_fidelity`)",
            params=("exit_rule", "min_fidelity"),
        )
    n, skipped = len(calibration), len(getattr(calibration, "skipped", []) or [])
    if n >= cfg.min_images:
        return
    bad = f", {skipped:,} more unreadable and skipped (first: {calibration.skipped[0][0]})" if skipped else ""
    raise OvclipError(
        f"early exit needs at least {cfg.min_images:,} readable calibration images; {calibration.source} has "
        f"{n:,}{bad}. Add images to `calibration`, or quantize without exits",
        params="calibration",
    )
