"""IR surgery: join consecutive single-block IRs into one stage IR (output of one feeds the next)."""

from __future__ import annotations

import openvino as ov


def stitch(models: list[ov.Model], name: str = "vision_stage") -> ov.Model:
    """One ov.Model computing models[-1](...models[0](x)); the graphs are joined, not copied.

    Each model must have one input and one output. The inputs of models[1:] are rewired to the
    previous model's result, so the joined graph is op for op the same as running them in turn.
    """
    if not models:
        raise ValueError("nothing to stitch")
    params = [models[0].get_parameters()[0]]
    prev = models[0].get_results()[0].input_value(0)
    for m in models[1:]:
        p = m.get_parameters()[0]
        for target in list(p.output(0).get_target_inputs()):
            target.replace_source_output(prev)
        prev = m.get_results()[0].input_value(0)
    out = models[-1].get_results()[0]
    joined = ov.Model([out], params, name)
    joined.outputs[0].get_tensor().set_names(set(models[-1].outputs[0].get_names()))
    return joined


def clone(model: ov.Model) -> ov.Model:
    return model.clone()
