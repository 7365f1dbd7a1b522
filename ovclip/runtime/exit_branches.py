"""Early exit for one image at a time, as nested OpenVINO If ops: an image that leaves runs nothing after its exit.

The compaction graph (`ovclip.runtime.exit_graph`) keeps every later node in the request and runs it on an empty
batch once the image has left; at batch 1 that walk costs nearly what the skipped blocks would (on the built-in
folder it kept under 1 % of a 22 % FLOPs saving). Here each exit ends in an If whose `then` body returns the head's
embedding and whose `else` body holds the rest of the tower, so the plugin executes only the branch taken:

    h = stage_0(pixels); emb, sav = head_8(h)
    If all(rule(emb, ...) >= tau_8):  (image_embeds, exit_layer) = (emb, 8)
    else:                             h = stage_1(h); emb, sav = head_10(h)
                                      If ...: (emb, 10) else: (normalize(stage_2(h)), 12)

The condition is "every image of the batch leaves", which is the per-image rule only when the batch holds one
image: `Deployment` runs this graph for batch 1 and the compaction graph otherwise. Decisions and embeddings are
the ones of `exit_graph` and `ExitPolicy.decide` (`ovclip.runtime.graph_ops`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class _Tower:
    """What every branch reads: the stages and heads (consumed as they are grafted) and the policy."""

    stages: list[ov.Model]
    ends: list[int]
    heads: dict[int, ov.Model]
    policy: ExitPolicy
    live: list[int]
    needed: set[int]


def _rows_of(value: int, like: ov.Output) -> ov.Output:
    """(N,) int32 filled with `value`, N = the batch of `like`."""
    n = ops.gather(ops.shape_of(like, "i64"), np.array([0], np.int64), np.int64(0))
    return ops.broadcast(np.int32(value), n).output(0)


def _parameter(like: ov.Output, name: str) -> ov.Node:
    return ops.parameter(like.get_partial_shape(), like.get_element_type(), name=name)


def _rest(t: _Tower, k: int, h: ov.Output, prev, prev_scores, cls) -> tuple[ov.Output, ov.Output]:
    """(embedding, exit layer) of the tower from stage `k` on, fed `h`, in the current graph or body (stage 0 keeps
    its own pixel input, which is the model's)."""
    num_layers = t.ends[-1]
    while True:
        end = t.ends[k]
        h = t.stages[0].get_results()[0].input_value(0) if k == 0 else graft(t.stages[k], h)[0]
        k += 1
        if end == num_layers:
            return l2_normalize_op(h), _rows_of(num_layers, h)
        if end not in t.needed:
            continue
        emb, sav, scores = head_outputs(t.heads[end], h, cls)
        if end not in t.live or (t.policy.rule == "agreement" and prev is None):
            prev, prev_scores = emb, scores  # no one leaves here; it seeds the next exit's comparison
            continue
        leave = leave_mask(*exit_score(t.policy, end, emb, sav, scores, prev, prev_scores))
        return _branch(t, k, end, leave, h, emb, scores, cls)


def _branch(t: _Tower, k: int, end: int, leave: ov.Output, h, emb, scores, cls) -> tuple[ov.Output, ov.Output]:
    """If every image leaves at `end`: its head embedding; else the rest of the tower from stage `k`."""
    t_emb = _parameter(emb, f"exit_{end}_embeds")
    then_out = [ops.result(t_emb), ops.result(_rows_of(end, t_emb.output(0)))]
    then_body = ov.Model(then_out, [t_emb], f"exit_at_{end}")

    previous = t.policy.needs_previous  # later exits compare with this one: carry its outputs into the branch
    carried = {
        "tokens": h,
        "previous": emb if previous else None,
        "previous_scores": scores if previous else None,
        "class_embeddings": cls,
    }
    inner = {name: _parameter(v, f"after_{end}_{name}") for name, v in carried.items() if v is not None}
    inside = {name: p.output(0) for name, p in inner.items()}.get
    rest = _rest(t, k, inside("tokens"), inside("previous"), inside("previous_scores"), inside("class_embeddings"))
    else_out = [ops.result(out) for out in rest]
    else_body = ov.Model(else_out, list(inner.values()), f"after_{end}")

    node = ops.if_op(ops.reduce_logical_and(leave, np.array([0], np.int64), False).output(0))
    node.set_then_body(then_body)
    node.set_else_body(else_body)
    node.set_input(emb, t_emb, None)
    for name, param in inner.items():
        node.set_input(carried[name], None, param)
    return node.set_output(then_out[0], else_out[0]), node.set_output(then_out[1], else_out[1])


def exit_branches(
    stages: list[ov.Model],
    stage_ends: list[int],
    heads: dict[int, ov.Model],
    policy: ExitPolicy,
    embedding_dim: int,
    name: str = "vision_exit_branches",
) -> ov.Model:
    """One model for batches of one image, inputs and outputs as `exit_graph`'s (pixel_values, + class_embeddings
    pre-scaled by logit_scale when the rule needs labels; image_embeds, exit_layer). `stages` and `heads` are
    consumed. A policy without a threshold set is an error: its graph is `exit_graph(..., policy=None)`."""
    live, needed = exits_in_graph(policy)
    if not live:
        raise ValueError("exit_branches: the policy lets no image leave (no threshold set)")
    pixels = stages[0].get_parameters()[0]
    params = [pixels]
    if policy.needs_labels:
        params.append(class_embeddings_parameter(embedding_dim))
    cls = params[1].output(0) if len(params) > 1 else None
    tower = _Tower(stages, stage_ends, heads, policy, live, needed)
    embeddings, exit_layer = _rest(tower, 0, pixels.output(0), None, None, cls)
    return named_model(embeddings, exit_layer, params, name)


def for_one_image(model: ov.Model, classes: int | None = None) -> ov.Model:
    """`model` (an `exit_graph` or `exit_branches` model) reshaped in place for exactly one image, and `classes`
    class embeddings where it takes them: static shapes let the plugin plan every buffer once instead of
    re-inferring shapes on each call (at batch 1 on the built-in folder about 15 % of the latency,
    benchmarks/RESULTS.md)."""
    pixels = model.inputs[0]
    shape = pixels.get_partial_shape()
    shapes = {pixels: ov.PartialShape([1, *[shape[i] for i in range(1, shape.rank.get_length())]])}
    if classes is not None and len(model.inputs) > 1:
        cls = model.inputs[1]
        shapes[cls] = ov.PartialShape([classes, cls.get_partial_shape()[1]])
    model.reshape(shapes)
    return model
