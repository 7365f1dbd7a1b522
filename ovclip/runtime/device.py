"""OpenVINO devices: which exist, how to compile for them, what precision they really execute."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import openvino as ov
import openvino.properties.hint as hints

from ovclip.errors import OvclipError

HINTS = {"throughput": hints.PerformanceMode.THROUGHPUT, "latency": hints.PerformanceMode.LATENCY}
VIRTUAL = ("AUTO", "MULTI", "HETERO", "BATCH")


@lru_cache(maxsize=1)
def core() -> ov.Core:
    return ov.Core()


def available_devices() -> list[str]:
    return list(core().available_devices)


def _physical(device: str) -> list[str]:
    """'AUTO:GPU,CPU' -> ['GPU', 'CPU']; 'GPU.1' -> ['GPU.1']; 'AUTO' -> []."""
    head, _, rest = device.partition(":")
    if head.upper() in VIRTUAL:
        return [d for d in rest.split(",") if d]
    return [device]


def check_device(device: str) -> str:
    """Return the device name, or raise one line naming the devices that are there."""
    if not device or not device.strip():
        raise OvclipError("--device is empty; use CPU, GPU, NPU or AUTO")
    device = device.strip()
    here = available_devices()
    for d in _physical(device):
        if d.upper() not in {h.upper() for h in here} and d.split(".")[0].upper() not in {h.upper() for h in here}:
            raise OvclipError(f"device {d!r} is not available here; OpenVINO sees: {', '.join(here) or 'none'}")
    return device


def default_cache_dir() -> Path:
    return Path(os.environ.get("OVCLIP_CACHE_DIR", Path.home() / ".cache" / "ovclip" / "ov_cache"))


def compile_config(
    device: str, hint: str = "latency", precision: str | None = None, streams: int | None = None
) -> dict:
    """Properties for compile_model: performance hint, CPU inference precision, model cache for GPU/NPU."""
    if hint not in HINTS:
        raise OvclipError(f"--hint {hint!r}: choose throughput or latency")
    cfg: dict = {hints.performance_mode: HINTS[hint]}
    base = device.split(":")[0].split(".")[0].upper()
    if precision is not None:
        cfg[hints.inference_precision] = (
            ov.Type.f32 if precision == "f32" else ov.Type.bf16 if precision == "bf16" else ov.Type.f16
        )
    if streams is not None:
        cfg["NUM_STREAMS"] = str(streams)
    if base in ("GPU", "NPU") or any(d.split(".")[0].upper() in ("GPU", "NPU") for d in _physical(device)):
        cache = default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        cfg["CACHE_DIR"] = str(cache)
    return cfg


def compile_model(model: ov.Model | str | Path, device: str, config: dict) -> ov.CompiledModel:
    try:
        return core().compile_model(model if isinstance(model, ov.Model) else str(model), device, config)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = "the model" if isinstance(model, ov.Model) else model
        raise OvclipError(f"OpenVINO could not compile {what} for {device}: {first}") from e


def supports_bf16(device: str = "CPU") -> bool:
    try:
        return "BF16" in core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def executed_precision(compiled: ov.CompiledModel) -> str:
    """What the plugin really runs floating-point layers in ('f32', 'bf16', 'f16')."""
    try:
        return (
            str(compiled.get_property(hints.inference_precision))
            .lower()
            .replace("<type: '", "")
            .rstrip("'>")
            .replace("float32", "f32")
            .replace("bfloat16", "bf16")
            .replace("float16", "f16")
        )
    except RuntimeError:
        return "unknown"
