"""Quantization settings as one object, passed through to NNCF."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ovclip.errors import OvclipError

TEXT_MODES = ("int8", "fp16", "fp32")
TARGETS = ("ANY", "CPU", "GPU", "NPU")
# SmoothQuant alphas tried by `smooth_quant_alpha="auto"`; None switches SmoothQuant off.
AUTO_ALPHAS: tuple[float | None, ...] = (None, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class QuantizationConfig:
    subset_size: int = 300  # calibration images NNCF collects statistics on
    smooth_quant_alpha: float | str | None = "auto"  # a float in (0, 1], None (off) or "auto"
    auto_alphas: tuple[float | None, ...] = field(default=AUTO_ALPHAS)
    auto_holdout: int = 500  # held-out calibration images that pick the alpha (cosine to FP32)
    text: str = "fp16"  # text tower: int8 (NNCF), fp16 or fp32 weights
    target_device: str = "ANY"
    fast_bias_correction: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.subset_size < 1:
            raise OvclipError(f"--subset-size {self.subset_size}: must be at least 1")
        if self.text not in TEXT_MODES:
            raise OvclipError(f"--text {self.text!r}: choose one of {', '.join(TEXT_MODES)}")
        if self.target_device.upper() not in TARGETS:
            raise OvclipError(f"--target-device {self.target_device!r}: choose one of {', '.join(TARGETS)}")
        a = self.smooth_quant_alpha
        if not (a is None or a == "auto" or (isinstance(a, float) and 0 < a <= 1)):
            raise OvclipError(f"--smooth-quant {a!r}: give a number in (0, 1], 'off' or 'auto'")

    @staticmethod
    def parse_alpha(text: str | None) -> float | str | None:
        if text is None or text.lower() == "auto":
            return "auto"
        if text.lower() in ("off", "none", "no"):
            return None
        try:
            return float(text)
        except ValueError:
            raise OvclipError(f"--smooth-quant {text!r}: give a number in (0, 1], 'off' or 'auto'") from None

    def as_dict(self) -> dict:
        return asdict(self)
