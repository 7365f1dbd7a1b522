"""Fit the per-exit logistic gate (paper Eq. 4): P(this exit is right | features), and choose its features.

The paper's gate reads (top-1 confidence, top-2 margin, SAV). On a model where margin and SAV carry no
information beyond confidence, adding them only adds estimation noise, and the gate ranks samples worse
than confidence alone. `select_gate` therefore fits each candidate feature set and keeps the one whose
cross-validated ROC AUC on the gate split is highest (ties: the smaller set); from the second exit on the
candidates include agreement with the previous exit, which the paper does not use.
"""

from __future__ import annotations

import numpy as np

from ovclip.policy.rules import PAPER_GATE_FEATURES, Gate, gate_feature_values

CANDIDATES_FIRST_EXIT = (("confidence",), ("confidence", "margin"), PAPER_GATE_FEATURES)
CANDIDATES_LATER_EXITS = (
    *CANDIDATES_FIRST_EXIT,
    ("confidence", "agreement", "same_top1"),
    (*PAPER_GATE_FEATURES, "agreement", "same_top1"),
)


def fit_logistic(
    x: np.ndarray, correct: np.ndarray, ridge: float = 1e-3, iters: int = 50
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Maximum-likelihood logistic regression (Newton/IRLS, small ridge) on standardised columns of `x`;
    returns (w, b, mu, sd): P(correct) = sigmoid(((x - mu) / sd) @ w + b)."""
    mu, sd = x.mean(0), x.std(0) + 1e-12
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    y = correct.astype(np.float64)
    w = np.zeros(z.shape[1])
    reg = ridge * np.eye(z.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-z @ w))
        grad = z.T @ (p - y) + reg @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1]), mu, sd


def fit_gate(
    scores: np.ndarray,
    sav: np.ndarray,
    correct: np.ndarray,
    ridge: float = 1e-3,
    iters: int = 50,
    *,
    features: tuple[str, ...] = PAPER_GATE_FEATURES,
    emb: np.ndarray | None = None,
    prev: np.ndarray | None = None,
    prev_scores: np.ndarray | None = None,
) -> Gate:
    """The gate on `features` of each sample's exit scores, SAV and (agreement features) previous exit."""
    x = gate_feature_values(features, scores, sav, emb, prev, prev_scores)
    w, b, mu, sd = fit_logistic(x, correct, ridge, iters)
    return Gate(w=w, b=b, mu=mu, sd=sd, features=tuple(features))


def roc_auc(correct: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half); 0.5 when one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(correct, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return 0.5
    r = rankdata(score)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def cv_auc(x: np.ndarray, correct: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Out-of-fold ROC AUC of a logistic fit on `x` (a single column is its own score: no fit needed)."""
    if x.shape[1] == 1:
        return roc_auc(correct, x[:, 0])
    idx = np.random.default_rng(seed).permutation(len(correct))
    out = np.zeros(len(correct))
    for f in range(folds):
        test = idx[f::folds]
        train = np.setdiff1d(idx, test)
        w, b, mu, sd = fit_logistic(x[train], correct[train])
        out[test] = ((x[test] - mu) / sd) @ w + b
    return roc_auc(correct, out)


def select_gate(
    scores: np.ndarray,
    sav: np.ndarray,
    correct: np.ndarray,
    *,
    emb: np.ndarray | None = None,
    prev: np.ndarray | None = None,
    prev_scores: np.ndarray | None = None,
    candidates: tuple[tuple[str, ...], ...] | None = None,
    features: tuple[str, ...] | None = None,
    folds: int = 5,
) -> tuple[Gate, dict[str, float]]:
    """The gate of the candidate feature set with the best cross-validated AUC (ties to 1e-6: the smaller,
    then the earlier set), fitted on all the samples; and the AUC of every candidate ("+"-joined names).
    Candidates default to the first-exit sets when `prev` is None, else those with agreement features too.
    `features` fixes the set instead (the AUCs are still measured and returned)."""
    if candidates is None:
        candidates = CANDIDATES_FIRST_EXIT if prev is None else CANDIDATES_LATER_EXITS
    y = np.asarray(correct, bool)
    aucs = {n: cv_auc(gate_feature_values(n, scores, sav, emb, prev, prev_scores), y, folds) for n in candidates}
    if features is None:
        features = max(aucs, key=lambda n: (round(aucs[n], 6), -len(n)))
    gate = fit_gate(scores, sav, correct, features=features, emb=emb, prev=prev, prev_scores=prev_scores)
    return gate, {"+".join(n): a for n, a in aucs.items()}
