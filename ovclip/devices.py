"""What OpenVINO sees on this machine, and what each device supports.

    describe_devices()          # one dict per device OpenVINO lists (CPU, GPU.0, NPU, ...)
    describe_devices("GPU")     # only that device; a missing one is a one-line OvclipError

Every figure is read from OpenVINO at run time, none is typed in:
- FULL_DEVICE_NAME, DEVICE_TYPE, OPTIMIZATION_CAPABILITIES (precisions the plugin can run),
  RANGE_FOR_STREAMS and the default INFERENCE_PRECISION_HINT are device properties;
- OPTIMAL_NUMBER_OF_INFER_REQUESTS is a property of a compiled model, so a tiny static-shape probe model
  (one MatMul, static so an NPU can compile it too) is compiled under the THROUGHPUT hint and asked.
- OpenVINO exposes no property saying whether a device takes dynamic shapes. Where a plugin lists one
  (a supported property whose name contains DYNAMIC_SHAPE) it is used; otherwise the answer comes from the
  device type, as OpenVINO's supported-devices feature matrix states it (CPU yes, GPU partial, NPU no),
  and `dynamic_shapes_basis` says which of the two it was.

The GPU and NPU paths are written against OpenVINO's documented properties but have not been run on
an Intel iGPU or NPU here (this machine has only a CPU); a property a plugin does not answer is reported
as missing, never guessed.
"""

from __future__ import annotations

import numpy as np

from ovclip.errors import OvclipError, first_line

# Entries of OPTIMIZATION_CAPABILITIES that are numeric precisions (the rest are features: WINOGRAD, EXPORT_IMPORT...)
PRECISION_CAPS = ("FP32", "BF16", "FP16", "INT16", "INT8", "U8", "INT4", "BIN")
# OpenVINO's feature matrix ("Supported Devices": Dynamic shapes — CPU Yes, GPU Partial, NPU No).
DYNAMIC_BY_TYPE = {"CPU": "yes", "GPU": "partial", "NPU": "no"}
VIRTUAL = ("AUTO", "MULTI", "HETERO", "BATCH")
UNTESTED_NOTE = "GPU/NPU paths are written to OpenVINO's documented properties but untested on hardware here."


def _core():
    from ovclip.runtime.device import core

    return core()


def _prop(device: str, name: str, errors: dict):
    try:
        return _core().get_property(device, name)
    except Exception as e:  # noqa: BLE001 - a plugin that does not answer is reported, not fatal
        errors[name] = first_line(e, limit=200)
        return None


def _type_name(t) -> str | None:
    """ov.Type / enum -> 'f32', 'bf16', 'integrated', ...; None stays None."""
    if t is None:
        return None
    s = str(t)
    if s.startswith("<Type: '"):
        s = s[len("<Type: '") : -2]
    s = s.split(".")[-1].lower()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(s, s)


def _probe_model():
    """x (1, 64) @ W (64, 64): static shapes, so every plugin (NPU included) can compile it."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 64], ov.Type.f32, name="x")
    w = ops.constant(np.eye(64, dtype=np.float32))
    return ov.Model([ops.matmul(x, w, False, False)], [x], "ovclip_probe")


def _throughput_probe(device: str, errors: dict) -> dict:
    import openvino.properties.hint as hints

    try:
        compiled = _core().compile_model(
            _probe_model(), device, {hints.performance_mode: hints.PerformanceMode.THROUGHPUT}
        )
    except Exception as e:  # noqa: BLE001
        errors["throughput_probe"] = first_line(e, limit=200)
        return {"optimal_infer_requests": None, "streams": None}
    out = {}
    for key, name in (("optimal_infer_requests", "OPTIMAL_NUMBER_OF_INFER_REQUESTS"), ("streams", "NUM_STREAMS")):
        try:
            v = compiled.get_property(name)
            out[key] = int(v) if v is not None else None
        except Exception as e:  # noqa: BLE001
            errors[name] = first_line(e, limit=200)
            out[key] = None
    return out


def _dynamic_shapes(device: str, supported: list[str]) -> tuple[str, str, str]:
    """('yes'|'partial'|'no'|'unknown', 'property'|'device type'|'none', basis in words)."""
    named = [p for p in supported if "DYNAMIC_SHAPE" in p.upper()]
    for p in named:
        v = _prop(device, p, {})
        if isinstance(v, bool):
            return ("yes" if v else "no"), "property", f"device property {p}"
    base = device.split(".")[0].upper()
    if base in DYNAMIC_BY_TYPE:
        return (
            DYNAMIC_BY_TYPE[base],
            "device type",
            f"device type {base}: OpenVINO's supported-devices feature matrix (the plugin exposes no property for it)",
        )
    return "unknown", "none", f"{device}: no device property and an unknown device type"


def describe(device: str) -> dict:
    """Everything `ovclip devices` reports about one physical device."""
    errors: dict[str, str] = {}
    supported = _prop(device, "SUPPORTED_PROPERTIES", errors) or {}
    supported = list(supported)
    caps = _prop(device, "OPTIMIZATION_CAPABILITIES", errors)
    caps = [str(c) for c in caps] if caps is not None else []
    rng = _prop(device, "RANGE_FOR_STREAMS", errors) if "RANGE_FOR_STREAMS" in supported else None
    if "RANGE_FOR_STREAMS" not in supported:
        errors.pop("RANGE_FOR_STREAMS", None)
    dyn, source, basis = _dynamic_shapes(device, supported)
    probe = _throughput_probe(device, errors)
    name = _prop(device, "FULL_DEVICE_NAME", errors)
    return {
        "device": device,
        "full_name": str(name) if name is not None else None,
        "device_type": _type_name(_prop(device, "DEVICE_TYPE", errors)) if "DEVICE_TYPE" in supported else None,
        "architecture": str(_prop(device, "DEVICE_ARCHITECTURE", errors))
        if "DEVICE_ARCHITECTURE" in supported
        else None,
        "optimization_capabilities": caps,
        "precisions": [c for c in PRECISION_CAPS if c in caps],
        "dynamic_shapes": dyn,
        "dynamic_shapes_source": source,
        "dynamic_shapes_basis": basis,
        "default_inference_precision": _type_name(_prop(device, "INFERENCE_PRECISION_HINT", errors)),
        "throughput_optimal_infer_requests": probe["optimal_infer_requests"],
        "throughput_streams": probe["streams"],
        "range_for_streams": list(rng) if rng is not None else None,
        "errors": errors,
    }


def _targets(device: str | None) -> list[str]:
    from ovclip.runtime.device import available_devices, check_device

    here = available_devices()
    if device is None:
        return here
    device = check_device(device)  # one line naming what exists, if it does not
    head, _, rest = device.partition(":")
    wanted = [d for d in rest.split(",") if d] if head.upper() in VIRTUAL else [device]
    if not wanted:  # bare AUTO / MULTI: everything it could pick
        return here
    out = []
    for w in wanted:
        exact = [h for h in here if h.upper() == w.upper()]
        out += exact or [h for h in here if h.split(".")[0].upper() == w.split(".")[0].upper()]
    return list(dict.fromkeys(out))


def describe_devices(device: str | None = None) -> list[dict]:
    """One dict per device OpenVINO sees (or only `device`; a missing one raises OvclipError)."""
    targets = _targets(device)
    if not targets:
        raise OvclipError("OpenVINO sees no devices here (not even CPU); check the openvino installation")
    return [describe(d) for d in targets]
