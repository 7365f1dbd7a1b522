"""NNCF post-training INT8 of a deployment's IR, calibrated stage by stage."""

from ovclip.quantize.config import QuantizationConfig

__all__ = ["QuantizationConfig"]
