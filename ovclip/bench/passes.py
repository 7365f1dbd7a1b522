"""One pass of a deployment over a whole data set: embeddings, exits, FLOPs, and zero-shot accuracy when the
set has labels; and the early-exit Pareto points on that data (one traced pass)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ovclip.bench.metrics import topk_accuracy
from ovclip.policy.flops import full_depth_flops, mean_flops
from ovclip.runtime import Deployment


@dataclass
class AccuracyResult:
    n: int
    top1: float | None  # None without labels or class embeddings
    top5: float | None
    correct: np.ndarray | None  # (N,) bool, top-1 right
    exit_layer: np.ndarray  # (N,)
    mean_flops: float
    embeddings: np.ndarray  # (N, E) L2-normalised image embeddings as the variant returns them
    rule: str | None  # the exit rule that ran (None: full depth)
    full_flops: float  # FLOPs of one image at full depth

    @property
    def flops_saving(self) -> float:
        return 1.0 - self.mean_flops / self.full_flops


def policy_used(dep: Deployment, class_emb: np.ndarray | None, ee: bool):
    """The exit policy a variant runs: with class embeddings the folder's class rule (or its label-free rule where it
    has none, e.g. a folder calibrated on unlabeled images), without them the label-free rule; None: full depth."""
    if not ee:
        return None
    if class_emb is not None and dep.policy is not None:
        return dep.policy
    return dep.embedding_policy


def accuracy_pass(
    dep: Deployment, dataset, class_emb: np.ndarray | None, ee: bool, chunk: int, tick=None
) -> AccuracyResult:
    """The whole set streamed in chunks (pixels are not all held at once): embeddings and exits; top-1/top-5
    when the set has labels and `class_emb` is given. Early exit runs `policy_used`'s rule."""
    policy = policy_used(dep, class_emb, ee)
    scores, exit_layer, emb = [], [], []
    for i in range(0, len(dataset), chunk):
        idx = np.arange(i, min(i + chunk, len(dataset)))
        px = dataset.pixels(idx, dep.preprocess_config)
        out = dep.run_vision(px, class_emb, early_exit=policy is not None, policy=policy)
        scores.append(out.scores)
        exit_layer.append(out.exit_layer)
        emb.append(out.embeddings)
        if tick:
            tick(min(1.0, (i + chunk) / len(dataset)))
    el = np.concatenate(exit_layer)
    classes = 0 if class_emb is None else len(class_emb)
    emb_dim = int(dep.manifest["embedding_dim"])
    labels = getattr(dataset, "labels", None)
    s = np.concatenate(scores) if class_emb is not None else None
    labelled = s is not None and labels is not None
    return AccuracyResult(
        n=len(el),
        top1=topk_accuracy(s, labels, 1) if labelled else None,
        top5=topk_accuracy(s, labels, 5) if labelled else None,
        correct=(s.argmax(1) == labels) if labelled else None,
        exit_layer=el,
        mean_flops=mean_flops(dep.vision, emb_dim, el, policy.exits if policy else [], classes),
        embeddings=np.concatenate(emb),
        rule=policy.rule if policy else None,
        full_flops=full_depth_flops(dep.vision, emb_dim),
    )


def pareto_on_data(dep: Deployment, dataset, class_emb: np.ndarray, chunk: int) -> list[dict]:
    """Accuracy vs FLOPs saving on this data for the thresholds the policy stored per budget, for the
    learned gate (where the folder deploys it: its gates are in the policy) and the confidence-only baseline (one
    traced pass: every head on every image)."""
    from ovclip.policy.cascade import evaluate
    from ovclip.policy.trace import trace_for_rule
    from ovclip.runtime.deployment import trace_vision

    policy = dep.policy
    rows = policy.info.get("pareto") or []
    if not rows:
        return []
    heads: dict[int, list] = {L: [] for L in policy.exits}
    finals = []
    for i in range(0, len(dataset), chunk):
        t = trace_vision(dep, dataset.pixels(np.arange(i, min(i + chunk, len(dataset))), dep.preprocess_config), policy)
        for L, v in t["heads"].items():
            heads[L].append(v)
        finals.append(t["final"])
    merged = {L: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for L, v in heads.items()}
    final = np.concatenate(finals)
    emb_dim = int(dep.manifest["embedding_dim"])
    traces = {
        rule: trace_for_rule(
            policy, rule, merged, final, class_emb, dataset.labels, dep.logit_scale, dep.vision, emb_dim
        )
        for rule in ("gate", "confidence")
        if rule != "gate" or set(policy.gates) == set(policy.exits)  # a non-gate policy carries no gates
    }
    full = traces["confidence"].flops[dep.num_layers]
    out = []
    for row in rows:
        if any(row[r].get("calibration_flops_saving", 1.0) < 1 - row["budget"] - 1e-9 for r in traces):
            continue  # no thresholds met this budget on the calibration data
        point = {"budget": row["budget"]}
        for rule, tr in traces.items():
            t = {int(k): v for k, v in row[rule]["thresholds"].items()}
            acc, fl, _ = evaluate(tr, t)
            point[rule] = {
                "top1": acc,
                "flops_saving": 1 - fl / full,
                "calibration_top1": row[rule]["calibration_top1"],
            }
        out.append(point)
    return out
