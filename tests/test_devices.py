"""ovclip devices: what OpenVINO sees, as records, a table and JSON; a missing device is one error line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import ovclip.devices as devmod
from ovclip.cli.devices import devices
from ovclip.devices import describe_devices
from ovclip.errors import OvclipError
from ovclip.runtime.device import available_devices

KEYS = {
    "device",
    "full_name",
    "device_type",
    "architecture",
    "optimization_capabilities",
    "precisions",
    "dynamic_shapes",
    "dynamic_shapes_source",
    "dynamic_shapes_basis",
    "default_inference_precision",
    "throughput_optimal_infer_requests",
    "throughput_streams",
    "range_for_streams",
    "errors",
}


def _cpu(records: list[dict]) -> dict:
    cpu = [r for r in records if r["device"] == "CPU"]
    assert len(cpu) == 1, records
    return cpu[0]


def test_cpu_is_listed_with_name_and_capabilities():
    cpu = _cpu(describe_devices())
    assert set(cpu) == KEYS
    assert isinstance(cpu["full_name"], str) and cpu["full_name"].strip()
    assert cpu["optimization_capabilities"] and "FP32" in cpu["precisions"]
    assert set(cpu["precisions"]) <= set(cpu["optimization_capabilities"])
    assert cpu["default_inference_precision"] in ("f32", "bf16", "f16")
    assert (cpu["dynamic_shapes"], cpu["dynamic_shapes_source"]) == ("yes", "device type")
    assert cpu["throughput_optimal_infer_requests"] >= 1 and cpu["throughput_streams"] >= 1
    lo, hi = cpu["range_for_streams"]
    assert 1 <= lo <= hi


def test_json_output_has_one_record_per_device():
    res = CliRunner().invoke(devices, ["--json"])
    assert res.exit_code == 0, res.output
    records = json.loads(res.stdout)
    assert [r["device"] for r in records] == available_devices()
    assert all(set(r) == KEYS for r in records)
    assert _cpu(records)["full_name"]


def test_table_names_the_devices_and_the_untested_paths():
    res = CliRunner().invoke(devices, [], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "CPU" in res.output and "untested on hardware" in res.output


def test_device_filter_and_virtual_devices():
    assert [r["device"] for r in describe_devices("CPU")] == ["CPU"]
    assert [r["device"] for r in describe_devices("AUTO:CPU")] == ["CPU"]


@pytest.mark.parametrize("missing", ["MYRIAD", "NPU"])
def test_missing_device_is_one_line_naming_what_exists(missing):
    if missing in available_devices():
        pytest.skip(f"{missing} is present on this machine")
    with pytest.raises(OvclipError, match="not available here"):
        describe_devices(missing)
    res = CliRunner().invoke(devices, ["--device", missing])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines == [
        f"error: device {missing!r} is not available here; OpenVINO sees: {', '.join(available_devices())}"
    ]


def test_dynamic_shapes_from_property_else_from_type(monkeypatch):
    assert devmod._dynamic_shapes("NPU", [])[:2] == ("no", "device type")
    assert devmod._dynamic_shapes("GPU.1", [])[:2] == ("partial", "device type")
    assert devmod._dynamic_shapes("FPGA", [])[:2] == ("unknown", "none")
    # A plugin that did expose a boolean property would win over the device type.
    monkeypatch.setattr(devmod, "_prop", lambda device, name, errors: True)
    assert devmod._dynamic_shapes("NPU", ["NPU_DYNAMIC_SHAPES"])[:2] == ("yes", "property")
