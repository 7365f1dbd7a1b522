"""OpenVINO devices: which exist, how to compile for them, what precision they really execute."""

from __future__ import annotations

import os
from pathlib import Path

import openvino as ov
import openvino.properties.hint as hints

from ovclip.errors import OvclipError
from ovclip.ir import compile_model, core

__all__ = [
    "available_devices",
    "cache_dir_for",
    "check_device",
    "compile_config",
    "compile_model",
    "core",
    "default_cache_dir",
    "executed_precision",
    "supports_bf16",
]

HINTS = {"throughput": hints.PerformanceMode.THROUGHPUT, "latency": hints.PerformanceMode.LATENCY}
VIRTUAL = ("AUTO", "MULTI", "HETERO", "BATCH")


def available_devices() -> list[str]:
    return list(core().available_devices)


def _physical(device: str) -> list[str]:
    """'AUTO:GPU,CPU' -> ['GPU', 'CPU']; 'GPU.1' -> ['GPU.1']; 'AUTO' -> []."""
    head, _, rest = device.partition(":")
    if head.upper() in VIRTUAL:
        return [d for d in rest.split(",") if d]
    return [device]


def device_name(device: str) -> str | None:
    """The plugin's FULL_DEVICE_NAME (e.g. the CPU model), None where it cannot say."""
    try:
        return str(core().get_property(device, "FULL_DEVICE_NAME"))
    except RuntimeError:
        return None


def check_device(device: str) -> str:
    """Return the device name, or raise one line naming the devices that are there."""
    if not device or not device.strip():
        raise OvclipError("`device` is empty; use CPU, GPU, NPU or AUTO", params="device")
    device = device.strip()
    here = available_devices()
    for d in _physical(device):
        if d.upper() not in {h.upper() for h in here} and d.split(".")[0].upper() not in {h.upper() for h in here}:
            raise OvclipError(f"device {d!r} is not available here; OpenVINO sees: {', '.join(here) or 'none'}")
    return device


# Devices whose compiled models are cached by default (OpenVINO's CACHE_DIR): GPU and NPU compile for tens of
# seconds; on CPU a warm cache cut the built-in INT8 folder's early-exit compile from 0.67 s to 0.15 s and its time
# to the first result from 0.98 s to 0.45 s on an idle 2-core Ice Lake (benchmarks/RESULTS.md, "Compile time and
# the model cache"), for 7 MB on disk.
CACHED_BY_DEFAULT = ("CPU", "GPU", "NPU")


CACHE_OFF = ("", "off", "none", "0")  # OVCLIP_CACHE_DIR values that switch the default cache off


def default_cache_dir() -> Path | None:
    """$OVCLIP_CACHE_DIR (None where it is set to one of `CACHE_OFF`), else ~/.cache/ovclip/ov_cache."""
    env = os.environ.get("OVCLIP_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in CACHE_OFF else Path(env)
    return Path.home() / ".cache" / "ovclip" / "ov_cache"


def cache_dir_for(device: str, cache_dir: str | Path | None = "default") -> Path | None:
    """The model cache folder compile_model gets: `cache_dir="default"` -> `default_cache_dir()` on the devices of
    `CACHED_BY_DEFAULT` (any of them inside AUTO/MULTI/HETERO), else none; None -> no cache; a path -> that folder."""
    if cache_dir is None:
        return None
    if cache_dir != "default":
        return Path(cache_dir)
    parts = [device, *_physical(device)]
    if any(d.split(":")[0].split(".")[0].upper() in CACHED_BY_DEFAULT for d in parts):
        return default_cache_dir()
    return None


def _usable(cache: Path, explicit: bool) -> bool:
    """Create the cache folder; one that cannot be created is an error when asked for, skipped by default (a
    read-only home on an edge box must not stop the model from loading)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return True
    except OSError as e:
        if not explicit:
            return False
        raise OvclipError(
            f"model cache folder {cache} cannot be created ({e.strerror or e}); pass another cache_dir or None",
            params="cache_dir",
        ) from None


def compile_config(
    device: str,
    hint: str = "latency",
    precision: str | None = None,
    streams: int | None = None,
    cache_dir: str | Path | None = "default",
) -> dict:
    """Properties for compile_model: performance hint, CPU inference precision, the model cache (`cache_dir_for`)."""
    if hint not in HINTS:
        raise OvclipError(f"hint={hint!r}: choose throughput or latency", params="hint")
    cfg: dict = {hints.performance_mode: HINTS[hint]}
    if precision is not None:
        cfg[hints.inference_precision] = (
            ov.Type.f32 if precision == "f32" else ov.Type.bf16 if precision == "bf16" else ov.Type.f16
        )
    if streams is not None:
        cfg["NUM_STREAMS"] = str(streams)
    cache = cache_dir_for(device, cache_dir)
    if cache is not None and _usable(cache, explicit=cache_dir != "default"):
        cfg["CACHE_DIR"] = str(cache)
    return cfg


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
