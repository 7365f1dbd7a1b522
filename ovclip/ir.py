"""OpenVINO IR at the lowest layer: one shared Core, reading and compiling with one-line errors, batched runs.

Export, quantize, the exit calibration and the runtime all use these; nothing here knows about deployment
folders, devices' performance settings or exit policies.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import openvino as ov

from ovclip.errors import OvclipError, first_line

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # CPU in float32 whatever the CPU's default (bf16 on AMX)


@lru_cache(maxsize=1)
def core() -> ov.Core:
    return ov.Core()


def read_model(path: str | Path) -> ov.Model:
    try:
        return core().read_model(str(path))
    except RuntimeError as e:
        raise OvclipError(f"{path}: OpenVINO cannot read this IR ({first_line(e)}); re-export the folder") from None


def compile_model(model: ov.Model | str | Path, device: str, config: dict) -> ov.CompiledModel:
    try:
        return core().compile_model(model if isinstance(model, ov.Model) else str(model), device, config)
    except RuntimeError as e:
        what = "the model" if isinstance(model, ov.Model) else model
        raise OvclipError(f"OpenVINO could not compile {what} for {device}: {first_line(e)}") from e


def compile_f32(model: ov.Model) -> ov.CompiledModel:
    """`model` compiled on CPU in float32: the reference precision calibration measures in."""
    return compile_model(model, "CPU", F32)


def run_batched(compiled: ov.CompiledModel, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """The first output of `compiled` on `x`, run `batch` rows at a time."""
    req = compiled.create_infer_request()
    return np.concatenate([np.array(req.infer({0: x[i : i + batch]})[0]) for i in range(0, len(x), batch)])
