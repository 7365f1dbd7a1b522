"""Turn a traced run (every head on every sample) into a cascade Trace for any exit rule."""

from __future__ import annotations

import numpy as np

from ovclip.policy.cascade import Trace
from ovclip.policy.flops import flops_to_exit
from ovclip.policy.rules import ExitPolicy


def exit_scores(
    policy: ExitPolicy, logits: dict[int, np.ndarray], sav: dict[int, np.ndarray], embs: dict[int, np.ndarray]
) -> dict[int, np.ndarray]:
    """Per exit of `policy`, the score its rule compares with the threshold, for every sample (as the runtime
    computes it: agreement features compare each exit with the previous one)."""
    out: dict[int, np.ndarray] = {}
    prev = prev_scores = None
    for L in policy.exits:
        out[L] = policy.score(L, logits[L], sav[L], prev, embs[L], prev_scores)
        prev, prev_scores = embs[L], logits[L]
    return out


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
    logits = {L: logit_scale * heads[L][0] @ class_emb.T for L in exits}
    correct = {L: logits[L].argmax(1) == labels for L in exits}
    as_rule = ExitPolicy(rule, exits, policy.heads, policy.thresholds, policy.gates if rule == "gate" else {})
    score = exit_scores(as_rule, logits, {L: heads[L][1] for L in exits}, {L: heads[L][0] for L in exits})
    full_correct = (final @ class_emb.T).argmax(1) == labels
    n = vision["num_layers"]
    flops = {L: float(flops_to_exit(vision, emb_dim, L, exits, len(class_emb))) for L in [*exits, n]}
    return Trace(exits, score, correct, full_correct, flops, n)
