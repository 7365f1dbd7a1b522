"""Fit the paper's per-exit logistic gate (Eq. 4): P(this exit is right | confidence, margin, SAV)."""

from __future__ import annotations

import numpy as np

from ovclip.exits.policy import Gate, confidence_features


def gate_inputs(scores: np.ndarray, sav: np.ndarray) -> np.ndarray:
    c, m = confidence_features(scores)
    return np.stack([c, m, sav.astype(np.float64)], axis=1)


def fit_gate(scores: np.ndarray, sav: np.ndarray, correct: np.ndarray, ridge: float = 1e-3, iters: int = 50) -> Gate:
    """Maximum-likelihood logistic regression (Newton/IRLS, small ridge) on standardised features."""
    x = gate_inputs(scores, sav)
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
    return Gate(w=w[:-1], b=float(w[-1]), mu=mu, sd=sd)
