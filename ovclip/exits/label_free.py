"""The label-free exit rule ("fidelity"), calibrated on any images.

Per exit, a `FidelityModel` predicts the cosine between that exit's embedding and the folder's full-depth
embedding of the same image (ridge regression on the exit's normalised embedding), fitted on one calibration
split. The thresholds are chosen on another, held-out split, to the objective: the fewest FLOPs whose mean
cosine to full depth stays above a bound with margin (`MinFidelity`), or the most faithful thresholds within a
FLOPs budget (`FlopsBudget`).

Labelled and unlabeled builds both call `label_free_policy`; only the exit embeddings and the full-depth
embeddings are read (no class labels, no text).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ovclip.exits.fidelity import MinFidelity, fidelity_bound, fidelity_trace, for_fidelity_budget, for_min_fidelity
from ovclip.exits.thresholds import FlopsBudget, Thresholds, grid
from ovclip.policy.cascade import Trace, evaluate, exit_layers
from ovclip.policy.flops import flops_to_exit
from ovclip.policy.rules import ExitPolicy, FidelityModel

RIDGE_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
PARETO_BOUNDS = (0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995)
LabelFreeObjective = MinFidelity | FlopsBudget


@dataclass
class LabelFreeData:
    """What the label-free rule is calibrated on: every calibration image's exit and full-depth embeddings."""

    embeddings: dict[int, np.ndarray]  # exit -> (N, E) normalised exit-head embeddings
    full: np.ndarray  # (N, E) the folder's own normalised full-depth embeddings
    fit_split: np.ndarray  # rows the fidelity models are fitted on (held out from head training)
    threshold_split: np.ndarray  # rows the thresholds are chosen on (held out from both)
    vision: Mapping  # the tower's shapes (FLOPs)
    embedding_dim: int

    def cosine(self, layer: int) -> np.ndarray:
        return np.sum(self.embeddings[layer] * self.full, axis=1)


def ridge_fit(x: np.ndarray, y: np.ndarray, lambdas=RIDGE_LAMBDAS, folds: int = 5, seed: int = 0):
    """Ridge regression y ~ x @ w + b with the penalty (x centred, lambda x N) chosen by k-fold CV mean
    squared error. Returns (w, b, lambda, cross-validated R^2)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    fold = np.random.default_rng(seed).permutation(len(y)) % folds

    def solve(xs, ys, lam):
        mu, my = xs.mean(0), ys.mean()
        xc = xs - mu
        w = np.linalg.solve(xc.T @ xc + lam * len(ys) * np.eye(xs.shape[1]), xc.T @ (ys - my))
        return w, my - mu @ w

    errors = {}
    for lam in lambdas:
        pred = np.empty_like(y)
        for k in range(folds):
            w, b = solve(x[fold != k], y[fold != k], lam)
            pred[fold == k] = x[fold == k] @ w + b
        errors[lam] = float(np.mean((pred - y) ** 2))
    best = min(lambdas, key=lambda lam: errors[lam])
    w, b = solve(x, y, best)
    return w, float(b), best, 1.0 - errors[best] / max(float(np.var(y)), 1e-12)


def fit_fidelity_models(data: LabelFreeData, layers: list[int]) -> tuple[dict[int, FidelityModel], dict]:
    """One `FidelityModel` per exit on the fit split (a linear function of the exit's embedding: agreement with
    the previous exit ranked no better on the built-in model, and would make every earlier head run), and how
    each fit went (penalty, cross-validated R^2)."""
    idx, models, record = data.fit_split, {}, {}
    for L in layers:
        w, b, lam, r2 = ridge_fit(data.embeddings[L][idx], data.cosine(L)[idx])
        models[L] = FidelityModel(w, b)
        record[str(L)] = {"ridge_lambda": lam, "cv_r2_fit_split": r2}
    return models, record


def label_free_trace(data: LabelFreeData, layers: list[int], models: dict[int, FidelityModel], idx) -> Trace:
    """The cascade under the fidelity rule on rows `idx`: scores, cosines to full depth, FLOPs per exit."""
    policy = ExitPolicy("fidelity", list(layers), {}, {}, predictors=models)
    score, prev = {}, None
    for L in layers:
        emb = data.embeddings[L][idx]
        score[L] = policy.score(L, None, np.zeros(len(emb)), prev, emb)
        prev = emb
    n = data.vision["num_layers"]
    flops = {L: float(flops_to_exit(data.vision, data.embedding_dim, L, layers)) for L in [*layers, n]}
    return fidelity_trace(list(layers), score, {L: data.cosine(L)[idx] for L in layers}, flops, n)


def choose_label_free(
    data: LabelFreeData, layers: list[int], objective: LabelFreeObjective, points: int = 25
) -> tuple[Thresholds, float, float, Trace, dict[int, FidelityModel], dict]:
    """Fidelity models for `layers` and the thresholds `objective` asks for on the threshold split: (thresholds,
    fidelity, mean FLOPs, the trace, the models, their fit record)."""
    models, fits = fit_fidelity_models(data, layers)
    tr = label_free_trace(data, layers, models, data.threshold_split)
    grids = {L: grid(tr.score[L], points) for L in layers}
    if isinstance(objective, MinFidelity):
        t, fid, fl = for_min_fidelity(tr, grids, objective.bound, objective.confidence)
    else:
        t, fid, fl = for_fidelity_budget(tr, grids, objective.fraction)
    return t, fid, fl, tr, models, fits


def label_free_policy(
    data: LabelFreeData, layers: list[int], objective: LabelFreeObjective, calibration: dict
) -> ExitPolicy:
    """The calibrated fidelity rule for exits `layers`; its `info` says what it was calibrated on and to what
    (`calibration`: the data record — source, labelled or not, image count)."""
    t, fid, fl, tr, models, fits = choose_label_free(data, layers, objective)
    _, _, per_image = evaluate(tr, t)
    taken = exit_layers(tr, t)
    confidence = objective.confidence if isinstance(objective, MinFidelity) else 0.95
    info = {
        "rule": "fidelity",
        "objective": objective.record(),
        "calibration_data": calibration,
        "splits": {"fidelity_models": len(data.fit_split), "thresholds": len(data.threshold_split)},
        "predictors": fits,
        "calibration_fidelity": fid,
        f"calibration_fidelity_lower_bound_{round(100 * confidence)}": fidelity_bound(per_image, confidence),
        "calibration_min_cosine": float(per_image.min()),
        "calibration_flops_saving": 1 - fl / tr.flops[tr.num_layers],
        "calibration_exit_shares": {str(L): float(np.mean(taken == L)) for L in [*layers, tr.num_layers]},
        "pareto": fidelity_pareto(tr, confidence),
    }
    return ExitPolicy("fidelity", list(layers), {}, t, info=info, predictors=models)


def fidelity_pareto(tr: Trace, confidence: float, points: int = 25) -> list[dict]:
    """Thresholds per bound of `PARETO_BOUNDS` on the threshold split (the same models): what another bound
    would have chosen, so it can be tried on other data without a new build (`with_thresholds`)."""
    grids = {L: grid(tr.score[L], points) for L in tr.exits}
    rows = []
    for bound in PARETO_BOUNDS:
        t, fid, fl = for_min_fidelity(tr, grids, bound, confidence)
        _, _, per = evaluate(tr, t)
        rows.append(
            {
                "min_fidelity": bound,
                "thresholds": {str(k): v for k, v in t.items()},
                "calibration_fidelity": fid,
                "calibration_fidelity_lower_bound": fidelity_bound(per, confidence),
                "calibration_flops_saving": 1 - fl / tr.flops[tr.num_layers],
            }
        )
    return rows


def describe_label_free(policy: ExitPolicy) -> str:
    i = policy.info
    bound = i["objective"].get("min_fidelity")
    target = f"mean cosine to full depth >= {bound}" if bound is not None else f"FLOPs <= {i['objective']}"
    return (
        f"label-free policy (fidelity, {target}): mean cosine {i['calibration_fidelity']:.4f} on "
        f"{i['splits']['thresholds']} held-out calibration images, FLOPs saving "
        f"{100 * i['calibration_flops_saving']:.1f}%"
    )
