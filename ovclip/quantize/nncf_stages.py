"""Stage-by-stage NNCF calibration: each stage sees the activations its quantized predecessor produces."""

from __future__ import annotations

import logging

import numpy as np
import openvino as ov

from ovclip.ir import compile_f32, run_batched
from ovclip.progress import Progress, advance
from ovclip.quantize.config import QuantizationConfig


def _nncf():
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


def _advanced(alpha: float | None):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    return AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1.0 if alpha is None else float(alpha))
    )


def quantize_model(model: ov.Model, items: list[np.ndarray], cfg: QuantizationConfig, alpha: float | None) -> ov.Model:
    """NNCF INT8 of one IR, statistics from `items` (each one input batch)."""
    nncf = _nncf()
    return nncf.quantize(
        model,
        nncf.Dataset(items),
        model_type=nncf.ModelType.TRANSFORMER,
        target_device=getattr(nncf.TargetDevice, cfg.target_device.upper()),
        subset_size=len(items),
        fast_bias_correction=cfg.fast_bias_correction,
        advanced_parameters=_advanced(alpha),
    )


def quantize_stages(
    stages: list[ov.Model],
    pixels: np.ndarray,
    cfg: QuantizationConfig,
    alpha: float | None,
    progress: Progress | None = None,
) -> list[ov.Model]:
    """Quantize every vision stage; stage k is calibrated on INT8 stage k-1's real outputs."""
    out: list[ov.Model] = []
    x = pixels
    for k, stage in enumerate(stages):
        q = quantize_model(stage, [x[i : i + 1] for i in range(len(x))], cfg, alpha)
        advance(progress, "NNCF INT8, stage by stage", (k + 1) / len(stages))
        out.append(q)
        if k + 1 < len(stages):
            x = run_batched(compile_f32(q), x)
    return out


def count_int8(model: ov.Model) -> dict[str, int]:
    """FakeQuantize nodes and int8/uint8 constants in a model: proof it holds INT8 weights."""
    fq = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
    i8 = sum(
        1
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_output_element_type(0) in (ov.Type.i8, ov.Type.u8)
    )
    return {"fake_quantize": fq, "int8_constants": i8}
