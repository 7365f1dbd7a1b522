"""The exit rules as OpenVINO ops: the graph twins of `ovclip.policy.rules` and the pieces both early-exit graphs
(`exit_graph`: batch compaction; `exit_branches`: one image, If ops) are built from.

Every decision matches `ExitPolicy.decide` (the gate is compared in logit space, sigmoid being monotone;
float32 here vs float64 there can flip a sample whose score lies within ~1e-6 of its threshold).
"""

from __future__ import annotations

import math

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovclip.policy.rules import ExitPolicy, FidelityModel


def graft(model: ov.Model, source: ov.Output) -> list[ov.Output]:
    """Feed `source` into `model`'s single input; return the model's result values (its graph is reused)."""
    param = model.get_parameters()[0]
    for target in list(param.output(0).get_target_inputs()):
        target.replace_source_output(source)
    return [r.input_value(0) for r in model.get_results()]


def l2_normalize_op(x: ov.Output) -> ov.Output:
    norm = ops.sqrt(ops.reduce_sum(ops.multiply(x, x), np.array([1], np.int64), keep_dims=True))
    return ops.divide(x, ops.maximum(norm, np.float32(1e-12))).output(0)


def _top2_features(scores: ov.Output) -> tuple[ov.Output, ov.Output]:
    """Top-1 softmax probability and its margin over the top-2 (as `confidence_features`)."""
    p = ops.softmax(scores, 1)
    top = ops.topk(p, np.int64(2), 1, "max", "value").output(0)
    p1 = ops.gather(top, np.int64(0), np.int64(1)).output(0)
    p2 = ops.gather(top, np.int64(1), np.int64(1)).output(0)
    return p1, ops.subtract(p1, p2).output(0)


def _top1(scores: ov.Output) -> ov.Output:
    return ops.topk(scores, np.int64(1), 1, "max", "none", "i64").output(1)


def _gate_inputs(
    names: tuple[str, ...], scores: ov.Output, sav: ov.Output, emb: ov.Output, prev, prev_scores
) -> list[ov.Output]:
    """The graph twin of `gate_feature_values`, one (K,) column per named feature."""
    conf, margin = _top2_features(scores)
    cols = []
    for name in names:
        if name == "confidence":
            cols.append(conf)
        elif name == "margin":
            cols.append(margin)
        elif name == "sav":
            cols.append(ops.reshape(sav, np.array([-1], np.int64), False).output(0))
        elif name == "agreement":
            cols.append(ops.reduce_sum(ops.multiply(emb, prev), np.array([1], np.int64)).output(0))
        else:  # same_top1
            same = ops.equal(_top1(scores), _top1(prev_scores))
            cols.append(ops.reshape(ops.convert(same, "f32"), np.array([-1], np.int64), False).output(0))
    return cols


def _fidelity(model: FidelityModel, emb: ov.Output, prev) -> ov.Output:
    """The graph twin of `FidelityModel.__call__`: emb @ w + b (+ agreement_weight * cos(emb, prev))."""
    w = np.asarray(model.w, np.float32).reshape(-1, 1)
    z = ops.add(ops.reshape(ops.matmul(emb, w, False, False), np.array([-1], np.int64), False), np.float32(model.b))
    if model.needs_previous:
        agreement = ops.reduce_sum(ops.multiply(emb, prev), np.array([1], np.int64))
        z = ops.add(z, ops.multiply(agreement, np.float32(model.agreement_weight)))
    return z.output(0)


def exit_score(
    policy: ExitPolicy, layer: int, emb: ov.Output, sav: ov.Output, scores, prev, prev_scores
) -> tuple[ov.Output, float]:
    """(score, threshold) in the space the graph compares them: logit for the gate, as-is otherwise."""
    tau = float(policy.thresholds[layer])
    if policy.rule == "agreement":
        return ops.reduce_sum(ops.multiply(emb, prev), np.array([1], np.int64)).output(0), tau
    if policy.rule == "confidence":
        return _top2_features(scores)[0], tau
    if policy.rule == "fidelity":
        return _fidelity(policy.predictors[layer], emb, prev), tau
    g = policy.gates[layer]
    z = ops.constant(np.float32(g.b))
    for k, f in enumerate(_gate_inputs(g.features, scores, sav, emb, prev, prev_scores)):
        wk = np.float32(g.w[k] / g.sd[k])
        z = ops.add(z, ops.multiply(ops.subtract(f, np.float32(g.mu[k])), wk))
    # sigmoid(z) >= tau  <=>  z >= log(tau / (1 - tau)). tau <= 0: always. tau >= 1: where float64's
    # sigmoid rounds to 1.0 (exp(-z) <= 2**-53), as the numpy cascade compares it.
    if tau <= 0.0:
        logit = -math.inf
    elif tau >= 1.0:
        logit = 53 * math.log(2.0) if tau == 1.0 else math.inf
    else:
        logit = math.log(tau / (1.0 - tau))
    return z.output(0), logit


def exits_in_graph(policy: ExitPolicy | None) -> tuple[list[int], set[int]]:
    """(live, needed): the exits where samples may leave (threshold set), and the exits whose heads must run —
    the live ones, and with a rule that compares against the previous exit every earlier one as well."""
    live = [] if policy is None else [e for e in policy.exits if policy.thresholds.get(e) is not None]
    needed = set(live)
    if live and policy.needs_previous:  # earlier exits feed the comparison even where none leave
        needed = {e for e in policy.exits if e <= max(live)}
    return live, needed


def leave_mask(score: ov.Output, tau: float) -> ov.Output:
    """(K,) bool: score >= tau, with tau = -inf (all leave) and +inf (none) as exact constants."""
    if tau == -math.inf:
        return ops.greater_equal(score, score).output(0)  # all True (NaN aside)
    if tau == math.inf:
        return ops.less(score, score).output(0)
    return ops.greater_equal(score, np.float32(tau)).output(0)


def head_outputs(head: ov.Model, h: ov.Output, cls: ov.Output | None) -> tuple[ov.Output, ov.Output, ov.Output | None]:
    """(normalised embedding, SAV, class scores or None) of an exit head grafted onto the tokens `h`; `cls` carries
    logit_scale."""
    emb, sav = graft(head, h)[:2]
    emb = l2_normalize_op(emb)
    scores = None if cls is None else ops.matmul(emb, cls, False, True).output(0)
    return emb, sav, scores


def class_embeddings_parameter(embedding_dim: int) -> ov.Node:
    """The (C, E) class-embeddings input of a graph whose rule needs labels (pre-scaled by logit_scale)."""
    param = ops.parameter(ov.PartialShape([-1, embedding_dim]), ov.Type.f32, name="class_embeddings")
    param.output(0).get_tensor().set_names({"class_embeddings"})
    return param


def named_model(embeddings: ov.Output, exit_layer: ov.Output, params: list, name: str) -> ov.Model:
    """The early-exit model's outputs, named image_embeds (N, E) and exit_layer (N,)."""
    out_emb = ops.result(embeddings)
    out_emb.output(0).get_tensor().set_names({"image_embeds"})
    out_layer = ops.result(exit_layer)
    out_layer.output(0).get_tensor().set_names({"exit_layer"})
    return ov.Model([out_emb, out_layer], params, name)
