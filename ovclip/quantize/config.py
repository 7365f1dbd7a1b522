"""Quantization settings as one object, passed through to NNCF."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from ovclip.errors import OvclipError

TextPrecision = Literal["int8", "fp16", "fp32"]  # text tower: int8 (NNCF), fp16 or fp32 weights
TargetDevice = Literal["ANY", "CPU", "GPU", "NPU"]  # the device NNCF tailors its quantization scheme to
TEXT_MODES: tuple[str, ...] = get_args(TextPrecision)
TARGETS: tuple[str, ...] = get_args(TargetDevice)
# SmoothQuant alphas tried by `smooth_quant_alpha="auto"`; None switches SmoothQuant off.
AUTO_ALPHAS: tuple[float | None, ...] = (None, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class QuantizationConfig:
    subset_size: int = 300  # calibration images NNCF collects statistics on
    smooth_quant_alpha: float | Literal["auto"] | None = "auto"  # a float in (0, 1], None (off) or "auto"
    auto_alphas: tuple[float | None, ...] = field(default=AUTO_ALPHAS)
    auto_holdout: int = 500  # held-out calibration images that pick the alpha (cosine to FP32)
    text: TextPrecision = "fp16"
    target_device: TargetDevice = "ANY"
    fast_bias_correction: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.subset_size < 1:
            raise OvclipError(f"subset_size={self.subset_size}: must be at least 1", params="subset_size")
        if self.text not in TEXT_MODES:
            raise OvclipError(f"text={self.text!r}: choose one of {', '.join(TEXT_MODES)}", params="text")
        if self.target_device.upper() not in TARGETS:
            raise OvclipError(
                f"target_device={self.target_device!r}: choose one of {', '.join(TARGETS)}", params="target_device"
            )
        a = self.smooth_quant_alpha
        if not (a is None or a == "auto" or (isinstance(a, float) and 0 < a <= 1)):
            raise OvclipError(
                f"smooth_quant_alpha={a!r}: give a number in (0, 1], None (off) or 'auto'", params="smooth_quant_alpha"
            )

    @staticmethod
    def parse_alpha(text: str | None) -> float | Literal["auto"] | None:
        """A SmoothQuant alpha as written on a command line: a number, 'off'/'none'/'no', or 'auto'."""
        if text is None or text.lower() == "auto":
            return "auto"
        if text.lower() in ("off", "none", "no"):
            return None
        try:
            return float(text)
        except ValueError:
            raise OvclipError(
                f"smooth_quant_alpha={text!r}: give a number in (0, 1], 'off' or 'auto'", params="smooth_quant_alpha"
            ) from None

    def as_dict(self) -> dict:
        return asdict(self)
