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

Every decision matches `ExitPolicy.decide` (`ovclip.runtime.graph_ops`). One image at a time (single-stream)
runs `ovclip.runtime.exit_branches` instead, where an image that exits skips every later node.
Full depth (`early_exit=False`) is the stages joined end to end: op for op the unsplit tower.
Needs dynamic shapes (CPU, GPU); static-shape devices (NPU) keep the per-stage Python path.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovclip.policy.rules import ExitPolicy
from ovclip.runtime.graph_ops import (
    class_embeddings_parameter,
    exit_score,
    exits_in_graph,
    graft,
    head_outputs,
    l2_normalize_op,
    leave_mask,
    named_model,
)


def _positions(mask: ov.Output) -> ov.Output:
    """(K,) bool -> (M,) int64 indices of the true entries."""
    return ops.squeeze(ops.non_zero(mask, "i64"), np.array([0], np.int64)).output(0)


def _take(x: ov.Output, positions: ov.Output) -> ov.Output:
    return ops.gather(x, positions, np.int64(0)).output(0)


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
    live, needed = exits_in_graph(policy)
    if live and policy.needs_labels:
        params.append(class_embeddings_parameter(embedding_dim))
        cls = params[-1].output(0)

    n = ops.gather(ops.shape_of(pixels, "i64"), np.array([0], np.int64), np.int64(0))
    embeddings = ops.broadcast(np.float32(0), ops.concat([n, np.array([embedding_dim], np.int64)], 0)).output(0)
    exit_layer = ops.broadcast(np.int32(num_layers), n).output(0)
    idx = ops.range(np.int64(0), ops.squeeze(n, np.array([0], np.int64)), np.int64(1), "i64").output(0)

    h = pixels.output(0)
    prev = prev_scores = None
    for k, (stage, end) in enumerate(zip(stages, stage_ends, strict=True)):
        h = stage.get_results()[0].input_value(0) if k == 0 else graft(stage, h)[0]
        if end == num_layers:
            embeddings = ops.scatter_update(embeddings, idx, l2_normalize_op(h), np.int64(0)).output(0)
            break
        if end not in needed:
            continue
        emb, sav, scores = head_outputs(heads[end], h, cls)
        if end not in live or (policy.rule == "agreement" and prev is None):
            prev, prev_scores = emb, scores  # no one leaves here; it seeds the next exit's comparison
            continue
        leave = leave_mask(*exit_score(policy, end, emb, sav, scores, prev, prev_scores))
        out_pos = _positions(leave)
        stay_pos = _positions(ops.logical_not(leave).output(0))
        leaving = _take(idx, out_pos)
        embeddings = ops.scatter_update(embeddings, leaving, _take(emb, out_pos), np.int64(0)).output(0)
        layer_const = ops.broadcast(np.int32(end), ops.shape_of(leaving, "i64")).output(0)
        exit_layer = ops.scatter_update(exit_layer, leaving, layer_const, np.int64(0)).output(0)
        h, idx, prev = _take(h, stay_pos), _take(idx, stay_pos), _take(emb, stay_pos)
        prev_scores = None if scores is None else _take(scores, stay_pos)
    return named_model(embeddings, exit_layer, params, name)
