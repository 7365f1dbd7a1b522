"""Early exit inside one OpenVINO graph: stages, heads, gates and batch compaction in a single infer call.

The Python runtime (`Deployment.run_vision` on static-shape devices) calls every stage and every head IR
in turn and compacts the batch in numpy between calls. On a small model those calls, copies and thread
hand-overs cost as much as the blocks that early exit saves. Here the same computation is joined into one
`ov.Model` with OpenVINO's own graph API, so the plugin runs it as one request:

    h = stage_0(pixels)                       idx = [0 .. N)
    emb, sav = head_L(h); leave = rule(emb, sav, class_embeddings, previous exit) >= tau_L
    embeddings[idx[leave]] = emb[leave]       exit_layer[idx[leave]] = L
    h, idx = h[~leave], idx[~leave]           (NonZero + Gather: later blocks see survivors only)
    ...
    embeddings[idx] = normalize(stage_last(h))

Every decision matches `ExitPolicy.decide` (the gate is compared in logit space, sigmoid being monotone;
float32 here vs float64 there can flip a sample whose score lies within ~1e-6 of its threshold).
Full depth (`early_exit=False`) is the stages joined end to end: op for op the unsplit tower.
Needs dynamic shapes (CPU, GPU); static-shape devices (NPU) keep the per-stage Python path.
"""

from __future__ import annotations

import math

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovclip.policy.rules import ExitPolicy, FidelityModel


def _graft(model: ov.Model, source: ov.Output) -> list[ov.Output]:
    """Feed `source` into `model`'s single input; return the model's result values (its graph is reused)."""
    param = model.get_parameters()[0]
    for target in list(param.output(0).get_target_inputs()):
        target.replace_source_output(source)
    return [r.input_value(0) for r in model.get_results()]


def _l2_normalize_op(x: ov.Output) -> ov.Output:
    norm = ops.sqrt(ops.reduce_sum(ops.multiply(x, x), np.array([1], np.int64), keep_dims=True))
    return ops.divide(x, ops.maximum(norm, np.float32(1e-12))).output(0)


def _positions(mask: ov.Output) -> ov.Output:
    """(K,) bool -> (M,) int64 indices of the true entries."""
    return ops.squeeze(ops.non_zero(mask, "i64"), np.array([0], np.int64)).output(0)


def _take(x: ov.Output, positions: ov.Output) -> ov.Output:
    return ops.gather(x, positions, np.int64(0)).output(0)


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


def _exit_score(
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


def exit_graph(
    stages: list[ov.Model],
    stage_ends: list[int],
    heads: dict[int, ov.Model],
    policy: ExitPolicy | None,
    embedding_dim: int,
    name: str = "vision_early_exit",
) -> ov.Model:
    """One model: inputs pixel_values (+ class_embeddings (C, E) pre-scaled by logit_scale if the rule
    needs labels); outputs image_embeds (N, E) L2-normalised and exit_layer (N,) int32.

    `stages` and `heads` are consumed (their graphs become part of the result); pass fresh copies.
    Exit layers whose threshold is None are left out. With `policy=None` no sample exits.
    """
    num_layers = stage_ends[-1]
    pixels = stages[0].get_parameters()[0]
    params = [pixels]
    cls = None
    live = [] if policy is None else [e for e in policy.exits if policy.thresholds.get(e) is not None]
    needed = set(live)
    if live and policy.needs_previous:  # earlier exits feed the comparison even where none leave
        needed = {e for e in policy.exits if e <= max(live)}
    if live and policy.needs_labels:
        cls_param = ops.parameter(ov.PartialShape([-1, embedding_dim]), ov.Type.f32, name="class_embeddings")
        cls_param.output(0).get_tensor().set_names({"class_embeddings"})
        params.append(cls_param)
        cls = cls_param.output(0)

    n = ops.gather(ops.shape_of(pixels, "i64"), np.array([0], np.int64), np.int64(0))
    embeddings = ops.broadcast(np.float32(0), ops.concat([n, np.array([embedding_dim], np.int64)], 0)).output(0)
    exit_layer = ops.broadcast(np.int32(num_layers), n).output(0)
    idx = ops.range(np.int64(0), ops.squeeze(n, np.array([0], np.int64)), np.int64(1), "i64").output(0)

    h = pixels.output(0)
    prev = prev_scores = None
    for k, (stage, end) in enumerate(zip(stages, stage_ends, strict=True)):
        h = stage.get_results()[0].input_value(0) if k == 0 else _graft(stage, h)[0]
        if end == num_layers:
            embeddings = ops.scatter_update(embeddings, idx, _l2_normalize_op(h), np.int64(0)).output(0)
            break
        if end not in needed:
            continue
        emb, sav = _graft(heads[end], h)[:2]
        emb = _l2_normalize_op(emb)
        scores = None if cls is None else ops.matmul(emb, cls, False, True).output(0)  # cls carries logit_scale
        if end not in live or (policy.rule == "agreement" and prev is None):
            prev, prev_scores = emb, scores  # no one leaves here; it seeds the next exit's comparison
            continue
        score, tau = _exit_score(policy, end, emb, sav, scores, prev, prev_scores)
        if tau == -math.inf:
            leave = ops.greater_equal(score, score).output(0)  # all True (NaN aside)
        elif tau == math.inf:
            leave = ops.less(score, score).output(0)
        else:
            leave = ops.greater_equal(score, np.float32(tau)).output(0)
        out_pos = _positions(leave)
        stay_pos = _positions(ops.logical_not(leave).output(0))
        leaving = _take(idx, out_pos)
        embeddings = ops.scatter_update(embeddings, leaving, _take(emb, out_pos), np.int64(0)).output(0)
        layer_const = ops.broadcast(np.int32(end), ops.shape_of(leaving, "i64")).output(0)
        exit_layer = ops.scatter_update(exit_layer, leaving, layer_const, np.int64(0)).output(0)
        h, idx, prev = _take(h, stay_pos), _take(idx, stay_pos), _take(emb, stay_pos)
        prev_scores = None if scores is None else _take(scores, stay_pos)

    out_emb = ops.result(embeddings)
    out_emb.output(0).get_tensor().set_names({"image_embeds"})
    out_layer = ops.result(exit_layer)
    out_layer.output(0).get_tensor().set_names({"exit_layer"})
    return ov.Model([out_emb, out_layer], params, name)
