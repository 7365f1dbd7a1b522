"""Static shapes (NPU): every IR of a static-batch deployment folder has a fixed batch on every input.

Export, quantization and the exit calibration work on IR with a dynamic batch (NNCF feeds one image at a time,
calibration runs hundreds); the batch is fixed on each model just before it is saved (`with_static_batch`), so the
stages, the text tower and the exit heads of one folder all take the same batch. `dynamic_inputs` is the check.
"""

from __future__ import annotations

from pathlib import Path

import openvino as ov

from ovclip.errors import OvclipError
from ovclip.ir import read_model


def with_static_batch(model: ov.Model, batch: int | None) -> ov.Model:
    """`model`, reshaped in place, with the first dimension of every input fixed to `batch` (None: unchanged).
    Every other dimension must already be static: a static folder has no dynamic dimension anywhere."""
    if batch is None:
        return model
    if batch < 1:
        raise OvclipError(f"static_batch={batch}: must be a positive batch size", params="static_batch")
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        rest = [shape[i] for i in range(1, shape.rank.get_length())]
        if any(d.is_dynamic for d in rest):
            raise OvclipError(f"input {port.any_name!r} of {model.friendly_name}: dynamic past the batch ({shape})")
        shapes[port] = ov.PartialShape([batch, *rest])
    model.reshape(shapes)
    return model


def dynamic_inputs(model: ov.Model) -> list[str]:
    """'name shape' of every input of `model` with a dynamic dimension (rank included)."""
    return [f"{p.any_name} {p.get_partial_shape()}" for p in model.inputs if p.get_partial_shape().is_dynamic]


def folder_dynamic_inputs(folder: str | Path) -> dict[str, list[str]]:
    """For every IR file in `folder`: its inputs with a dynamic dimension (empty lists: all static)."""
    folder = Path(folder)
    return {p.name: dynamic_inputs(read_model(p)) for p in sorted(folder.glob("*.xml"))}
