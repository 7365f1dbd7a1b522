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


def _logistic(ridge: float, iters: int):
    """scikit-learn's logistic regression minimising NLL + ridge/2 ||w||^2 (intercept not penalised) by
    Newton's method (Cholesky), as the gate's maximum-likelihood fit asks."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=np.inf if ridge == 0 else 1 / ridge, solver="newton-cholesky", tol=1e-10, max_iter=iters
    )


def fit_logistic(
    x: np.ndarray, correct: np.ndarray, ridge: float = 1e-3, iters: int = 50
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Maximum-likelihood logistic regression (small ridge) on standardised columns of `x`;
    returns (w, b, mu, sd): P(correct) = sigmoid(((x - mu) / sd) @ w + b)."""
    mu, sd = x.mean(0), x.std(0) + 1e-12
    y = np.asarray(correct, bool)
    if y.all() or not y.any():  # one class: no finite fit; a constant gate at the rate (+1/2 smoothed, Jeffreys)
        rate = (y.sum() + 0.5) / (len(y) + 1.0)
        return np.zeros(x.shape[1]), float(np.log(rate / (1 - rate))), mu, sd
    model = _logistic(ridge, iters).fit((x - mu) / sd, y)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0]), mu, sd


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
    """ROC AUC (the Mann-Whitney statistic, ties count half); 0.5 when one class is absent."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(correct, bool)
    if y.all() or not y.any():
        return 0.5
    return float(roc_auc_score(y, score))


def cv_auc(x: np.ndarray, correct: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """ROC AUC of out-of-fold logistic scores on `x` (stratified folds, standardised on each training part);
    a single column is its own score: no fit needed."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(correct, bool)
    if x.shape[1] == 1:
        return roc_auc(y, x[:, 0])
    folds = min(folds, int(y.sum()), int((~y).sum()))  # every fold holds both classes
    if folds < 2:
        return 0.5
    folding = StratifiedKFold(folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), _logistic(1e-3, 50))
    return roc_auc(y, cross_val_predict(model, x, y, cv=folding, method="decision_function"))


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
