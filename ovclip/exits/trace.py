"""Turn a traced run (every head on every sample) into a cascade Trace for any exit rule."""

from __future__ import annotations

import numpy as np

from ovclip.exits.cascade import Trace
from ovclip.exits.flops import flops_to_exit
from ovclip.exits.policy import ExitPolicy, confidence_features


def trace_for_rule(
    policy: ExitPolicy,
    rule: str,
    heads: dict[int, tuple[np.ndarray, np.ndarray]],
    final: np.ndarray,
    class_emb: np.ndarray,
    labels: np.ndarray,
    logit_scale: float,
    vision: dict,
    emb_dim: int,
) -> Trace:
    exits = list(policy.exits)
    score, correct = {}, {}
    for j, L in enumerate(exits):
        emb, sav = heads[L]
        logits = logit_scale * emb @ class_emb.T
        correct[L] = logits.argmax(1) == labels
        if rule == "gate":
            score[L] = policy.gates[L](logits, sav)
        elif rule == "confidence":
            score[L] = confidence_features(logits)[0]
        else:
            score[L] = np.full(len(emb), -np.inf) if j == 0 else np.sum(emb * heads[exits[j - 1]][0], axis=1)
    full_correct = (final @ class_emb.T).argmax(1) == labels
    n = vision["num_layers"]
    flops = {L: float(flops_to_exit(vision, emb_dim, L, exits, len(class_emb))) for L in [*exits, n]}
    return Trace(exits, score, correct, full_correct, flops, n)
