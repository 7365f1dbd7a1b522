"""Choose the exit rule on calibration data by cross-fitting (`ovclip quantize --exit-rule auto`).

Candidates: the paper's gate (confidence, margin, SAV), the CV-selected gate (`select_gate`), confidence
alone, and the label-free rule (agreement with the previous exit). The heads are trained once, on their own
part of the calibration images; the other images (the pool) are cut into k folds. For each fold, every
candidate's gates and its thresholds per FLOPs budget are fitted on the other k-1 folds and applied to the
held-out fold, so each pool image gets exactly one out-of-fold exit per candidate and budget. Per budget the
choice is the simplest candidate whose out-of-fold accuracy is not significantly below the best one's (paired,
5 % Bonferroni-corrected for the comparisons: a more complex rule has to earn its features); the deployed rule
is then fitted once more on the whole pool. The test split is never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from ovclip.exits.gate_fit import fit_gate, select_gate
from ovclip.exits.rule_modes import ExitRuleMode
from ovclip.exits.thresholds import (
    FlopsBudget,
    MaxDrop,
    Objective,
    Thresholds,
    _pick,
    _small,
    choose_thresholds,
    evaluate_grid,
    grid,
)
from ovclip.policy.cascade import Trace, evaluate, exit_layers
from ovclip.policy.rules import PAPER_GATE_FEATURES, ExitPolicy, Gate, Rule
from ovclip.policy.trace import exit_scores
from ovclip.progress import Progress, note

if TYPE_CHECKING:
    from ovclip.exits.calibrate import ExitOutputs

Candidate = Literal["confidence", "label-free", "paper", "select"]  # in order of simplicity (ties)
CANDIDATES: tuple[Candidate, ...] = get_args(Candidate)
POLICY_RULE: dict[str, Rule] = {
    "paper": "gate",
    "select": "gate",
    "confidence": "confidence",
    "label-free": "agreement",
}


@dataclass(frozen=True)
class Pool:
    """What a rule is fitted on and applied to: the heads' outputs, the exits, and FLOPs per exit."""

    out: ExitOutputs
    layers: list[int]
    flops: dict[int, float]  # exit (and num_layers) -> FLOPs of a sample leaving there
    num_layers: int

    def trace(self, candidate: Candidate, idx: np.ndarray, gates: dict[int, Gate]) -> Trace:
        o, layers = self.out, self.layers
        pol = ExitPolicy(POLICY_RULE[candidate], list(layers), {}, {}, gates)
        score = exit_scores(
            pol,
            {L: o.scores[L][idx] for L in layers},
            {L: o.sav[L][idx] for L in layers},
            {L: o.embeddings[L][idx] for L in layers},
        )
        correct = {L: o.correct[L][idx] for L in layers}
        return Trace(list(layers), score, correct, o.full_correct[idx], self.flops, self.num_layers)


def fit_gates(pool: Pool, candidate: Candidate, idx: np.ndarray) -> dict[int, Gate]:
    """The gates `candidate` fits on the images `idx` (none for confidence and label-free)."""
    if POLICY_RULE[candidate] != "gate":
        return {}
    o, gates = pool.out, {}
    for j, L in enumerate(pool.layers):
        ctx = {"emb": o.embeddings[L][idx]}
        if j:
            P = pool.layers[j - 1]
            ctx |= {"prev": o.embeddings[P][idx], "prev_scores": o.scores[P][idx]}
        args = (o.scores[L][idx], o.sav[L][idx], o.correct[L][idx])
        # the paper's set is fixed: fitted as `select_gate(features=...)` fits it, without measuring every set
        gates[L] = (
            fit_gate(*args, features=PAPER_GATE_FEATURES, **ctx)
            if candidate == "paper"
            else select_gate(*args, **ctx)[0]
        )
    return gates


def fit_thresholds(candidate: Candidate, tr: Trace, objectives: list[Objective]) -> list[tuple[Thresholds, bool]]:
    """Per objective, the thresholds `choose_thresholds` picks on `tr` (agreement never exits at its first exit)
    and whether they meet it (a FLOPs budget no thresholds meet: False). FLOPs budgets share one evaluation of
    the threshold grid where `for_budget` would evaluate it whole, and pick from it as `for_budget` does."""
    grids = {L: ([None] if candidate == "label-free" and j == 0 else grid(tr.score[L])) for j, L in enumerate(tr.exits)}
    full = tr.flops[tr.num_layers]
    shared = evaluate_grid(tr, grids) if _small(tr, grids) else None
    out = []
    for obj in objectives:
        if isinstance(obj, FlopsBudget) and shared is not None:
            feasible = shared.flops / shared.n <= obj.fraction * full + 1e-6
            score = np.where(feasible, shared.correct - 1e-9 * shared.flops / full, -np.inf)
            t = _pick(grids, tr.exits, np.unravel_index(int(np.argmax(score)), score.shape))
            _, fl, _ = evaluate(tr, t)
        else:
            t, _, fl = choose_thresholds(tr, grids, obj)
        out.append((t, not isinstance(obj, FlopsBudget) or fl <= obj.fraction * full + 1e-6))
    return out


@dataclass
class FittedRule:
    candidate: Candidate
    gates: dict[int, Gate]
    thresholds: list[Thresholds]  # one per objective
    feasible: list[bool]


def fit_rule(pool: Pool, candidate: Candidate, idx: np.ndarray, objectives: list[Objective]) -> FittedRule:
    """`candidate`'s gates and its thresholds for every objective, all fitted on the images `idx`."""
    gates = fit_gates(pool, candidate, idx)
    tr = pool.trace(candidate, idx, gates)
    fits = fit_thresholds(candidate, tr, objectives)
    return FittedRule(candidate, gates, [t for t, _ in fits], [f for _, f in fits])


def folds_of(idx: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """`idx` cut at random (seeded) into k disjoint folds of near-equal size that cover it."""
    return np.array_split(np.random.default_rng(seed).permutation(np.asarray(idx)), k)


@dataclass
class CrossFit:
    """One candidate's out-of-fold exits: `exit_at[o][i]` is the block pool image `idx[i]` leaves after under
    objective o, decided by gates and thresholds fitted on the folds without it."""

    candidate: Candidate
    idx: np.ndarray
    exit_at: np.ndarray  # (objectives, N) block of exit (num_layers: full depth)
    feasible: np.ndarray  # (objectives,) every fold's training part met the objective
    correct: np.ndarray = field(repr=False)  # (objectives, N) the prediction at that exit is right
    flops: np.ndarray = field(repr=False)  # (objectives, N) FLOPs spent
    full_correct: np.ndarray = field(repr=False)  # (N,) full depth is right

    def top1(self) -> np.ndarray:
        return self.correct.mean(1)

    def saving(self, full_flops: float) -> np.ndarray:
        return 1 - self.flops.mean(1) / full_flops


def cross_fit(
    pool: Pool, candidate: Candidate, idx: np.ndarray, objectives: list[Objective], k: int = 5, seed: int = 0
) -> CrossFit:
    """Out-of-fold exits of `candidate` for every image of `idx` under every objective (k folds)."""
    folds = folds_of(idx, k, seed)
    pos = {int(v): i for i, v in enumerate(idx)}
    exit_at = np.full((len(objectives), len(idx)), -1, np.int32)
    feasible = np.ones(len(objectives), bool)
    for f, held in enumerate(folds):
        train = np.concatenate([folds[g] for g in range(k) if g != f])
        fit = fit_rule(pool, candidate, train, objectives)
        feasible &= np.asarray(fit.feasible)
        tr = pool.trace(candidate, held, fit.gates)
        at = [pos[int(v)] for v in held]
        for o, t in enumerate(fit.thresholds):
            exit_at[o, at] = exit_layers(tr, t)
    assert (exit_at >= 0).all(), "every pool image gets exactly one out-of-fold exit"
    o = pool.out
    correct = np.where(exit_at == pool.num_layers, o.full_correct[idx], False)
    flops = np.full(exit_at.shape, pool.flops[pool.num_layers], np.float64)
    for L in pool.layers:
        m = exit_at == L
        correct = np.where(m, o.correct[L][idx][None, :], correct)
        flops[m] = pool.flops[L]
    return CrossFit(candidate, np.asarray(idx), exit_at, feasible, correct, flops, o.full_correct[idx])


# A more complex rule must beat a simpler one significantly (two-sided 5 %, Bonferroni-corrected for the
# comparisons with the other candidates) in its paired out-of-fold difference to be chosen over it.
SIGNIFICANCE_LEVEL = 0.05


def significance_z(n_candidates: int, level: float = SIGNIFICANCE_LEVEL) -> float:
    """Standard errors a difference must clear: two-sided `level` split over the n - 1 comparisons with the
    best candidate (4 candidates: 2.39)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - level / (2 * max(n_candidates - 1, 1)))


def significantly_worse(worse: np.ndarray, better: np.ndarray, z: float) -> bool:
    """Whether per-image correctness `worse` is significantly below `better` on the same images: the paired
    difference's mean minus z standard errors is above 0."""
    d = better.astype(np.float64) - worse.astype(np.float64)
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    return bool(d.mean() - z * se > 0)


def pick(fits: dict[str, CrossFit], o: int, full_flops: float, objective: Objective) -> str:
    """The candidate `objective` (index `o`) prefers out of fold. Within a FLOPs budget: the simplest rule
    (order of `CANDIDATES`) whose out-of-fold accuracy is not significantly below the most accurate one's
    (paired over the pool images, `significantly_worse`, Bonferroni-corrected); on a few thousand images the
    candidates' differences are mostly noise, and picking the nominal best then fits that noise. Within a max
    drop: the fewest FLOPs whose out-of-fold drop against full depth stays below it (none: as for a budget)."""
    names = [c for c in CANDIDATES if c in fits and fits[c].feasible[o]] or [c for c in CANDIDATES if c in fits]
    acc = {c: float(fits[c].top1()[o]) for c in names}
    fl = {c: float(fits[c].flops[o].mean()) for c in names}
    if isinstance(objective, MaxDrop):
        drop = {c: float(fits[c].full_correct.mean()) - acc[c] for c in names}
        ok = [c for c in names if 100 * drop[c] <= objective.points]
        if ok:
            return min(ok, key=lambda c: (round(fl[c], 3), -acc[c], names.index(c)))
    best = max(names, key=lambda c: (round(acc[c], 9), -round(fl[c] / full_flops, 9), -names.index(c)))
    z = significance_z(len(names))
    return next(c for c in names if not significantly_worse(fits[c].correct[o], fits[best].correct[o], z))


def budgets_objectives(budgets: tuple[float, ...], objective: Objective) -> list[Objective]:
    """The Pareto budgets, then the build's own objective (last)."""
    return [*(FlopsBudget(b) for b in budgets), objective]


@dataclass
class RuleChoice:
    """The deployed class-score exit rule and what the manifest records about how it was chosen."""

    policy: ExitPolicy
    record: dict


def pool_of(out: ExitOutputs, layers: list[int], vision: dict, embedding_dim: int, num_classes: int) -> Pool:
    from ovclip.policy.flops import flops_to_exit

    n = int(vision["num_layers"])
    flops = {L: float(flops_to_exit(vision, embedding_dim, L, layers, num_classes)) for L in [*layers, n]}
    return Pool(out, list(layers), flops, n)


def cross_fit_record(pool: Pool, fits: dict[str, CrossFit], objectives: list[Objective], picks: list[str]) -> dict:
    """Every candidate's out-of-fold top-1 and FLOPs saving per budget (its cross-fitted Pareto points), and
    the candidate each budget picks."""
    full = pool.flops[pool.num_layers]
    budgets = [obj.fraction for obj in objectives[:-1]]  # type: ignore[union-attr]
    per_rule = {}
    for c, f in fits.items():
        top1, saving = f.top1(), f.saving(full)
        per_rule[c] = [
            {"budget": b, "top1": float(top1[o]), "flops_saving": float(saving[o]), "feasible": bool(f.feasible[o])}
            for o, b in enumerate(budgets)
        ]
    return {
        "candidates": per_rule,
        "pick_per_budget": [{"budget": b, "rule": picks[o]} for o, b in enumerate(budgets)],
        "objective": {
            c: {"top1": float(f.top1()[-1]), "flops_saving": float(f.saving(full)[-1])} for c, f in fits.items()
        },
    }


def choose_rule(
    pool: Pool,
    mode: ExitRuleMode,
    head_split: np.ndarray,
    objective: Objective,
    *,
    budgets: tuple[float, ...],
    folds: int = 5,
    seed: int = 0,
) -> RuleChoice:
    """The deployed rule for `mode` ("auto", "confidence", "label-free"; "paper"/"select" are the build's gate
    path): with "auto" the candidate the build's `objective` prefers out of fold; its gates and thresholds are
    then fitted on every calibration image the heads were not trained on."""
    n = len(pool.out.full_correct)
    idx = np.setdiff1d(np.arange(n), head_split)  # sorted: the folds depend only on the seed
    record: dict = {"mode": mode, "heads_trained_on": int(len(head_split)), "fitted_on": int(len(idx))}
    chosen: Candidate
    if mode == "auto":
        objectives = budgets_objectives(budgets, objective)
        fits = {c: cross_fit(pool, c, idx, objectives, folds, seed) for c in CANDIDATES}
        full = pool.flops[pool.num_layers]
        picks = [pick(fits, o, full, obj) for o, obj in enumerate(objectives)]
        chosen = picks[-1]  # type: ignore[assignment]
        record |= {"folds": folds, **cross_fit_record(pool, fits, objectives, picks)}
    elif mode in ("confidence", "label-free"):
        chosen = mode  # type: ignore[assignment]
    else:
        raise ValueError(f"choose_rule: mode {mode!r} is the gate path of the build")
    final = fit_rule(pool, chosen, idx, [objective])
    record["chosen"] = chosen
    policy = ExitPolicy(POLICY_RULE[chosen], list(pool.layers), {}, final.thresholds[0], final.gates)
    return RuleChoice(policy, record)


def deployed_rule(
    paper: ExitPolicy,
    mode: ExitRuleMode,
    out: ExitOutputs,
    head_split: np.ndarray,
    geometry: tuple[dict, int, int],
    objective: Objective,
    *,
    budgets: tuple[float, ...],
    seed: int = 0,
    progress: Progress | None = None,
) -> ExitPolicy:
    """The build's class-score exit policy for `mode`: "paper"/"select" keep the gate path's policy `paper` as
    it is; otherwise `choose_rule` on the heads' outputs (`geometry`: vision record, embedding size, classes).
    The manifest's `info.exit_rule` records the mode and, for "auto", every candidate's cross-fitted points."""
    if mode in ("paper", "select"):
        return replace(paper, info={**paper.info, "exit_rule": {"mode": mode}})
    pool = pool_of(out, paper.exits, *geometry)
    choice = choose_rule(pool, mode, head_split, objective, budgets=budgets, seed=seed)
    note(progress, describe_choice(choice.record))
    return replace(choice.policy, info={**paper.info, "exit_rule": choice.record})


def describe_choice(rec: dict) -> str:
    text = f"exit rule ({rec['mode']}): {rec['chosen']}"
    if "objective" in rec:
        oof = ", ".join(f"{c} {100 * v['top1']:.2f}%" for c, v in rec["objective"].items())
        text += f"; cross-fitted top-1 ({rec['folds']} folds, {rec['fitted_on']:,} images): {oof}"
    return text
