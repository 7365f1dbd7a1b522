"""precision auto's decision on given measurement tables (img/s per round, top-1 / fidelity), and how a folder's
"deployed" record is read back; no model runs here (the real run is in test_deploy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ovclip.errors import OvclipError
from ovclip.folder.deployed import deployed_early_exit, deployed_precision
from ovclip.precision.decide import Measured, Tolerance, decide, decision_record


def m(name, rounds, top1=None, cosine=None, *, folder="int8", precision="f32", ee=False, ref=False):
    return Measured(name, folder, precision, ee, tuple(rounds), top1, cosine, ref)


# An AMX-like table: bf16 float beats INT8, and early exit helps both.
AMX = [
    m("fp32", [310, 300, 320], 0.8245, 1.0, folder="float", ref=True),
    m("bf16", [700, 640, 780], 0.8240, 0.9995, folder="float", precision="bf16"),
    m("bf16-ee", [840, 770, 900], 0.8230, 0.97, folder="float", precision="bf16", ee=True),
    m("int8", [650, 600, 700], 0.8259, 0.998, precision="bf16"),
    m("int8-ee", [900, 880, 800], 0.8170, 0.96, precision="bf16", ee=True),  # fastest, but 0.75 points below
]


def test_fastest_within_tolerance_wins_and_the_faster_one_outside_is_excluded():
    d = decide(AMX, Tolerance(top1_points=0.5))
    assert d.metric == "top1"
    assert d.chosen.name == "bf16-ee"  # median 840; int8-ee's median 880 is higher, but 0.75 points below FP32
    assert d.eligible == {"fp32": True, "bf16": True, "bf16-ee": True, "int8": True, "int8-ee": False}
    assert d.shortfall["int8-ee"] == pytest.approx(0.75)
    assert d.shortfall["int8"] == pytest.approx(-0.14)  # INT8 above FP32: a negative shortfall
    # speedups are medians of the within-round ratios, not ratios of medians
    assert d.speedup["int8"] == pytest.approx(np.median([840 / 650, 770 / 600, 900 / 700]))
    assert d.speedup["int8-ee"] == pytest.approx(np.median([840 / 900, 770 / 880, 900 / 800]))
    assert "bf16-ee (bf16) is the fastest within tolerance: 840.0 img/s" in d.reason
    assert "x bf16 (the next fastest within tolerance)" in d.reason
    assert "out of tolerance: int8-ee (0.75 points of top-1 below FP32)" in d.reason


def test_a_wider_tolerance_lets_the_fastest_through():
    assert decide(AMX, Tolerance(top1_points=0.75)).chosen.name == "int8-ee"
    assert decide(AMX, Tolerance(top1_points=0.0)).chosen.name == "int8"  # above FP32; bf16 is 0.05 below


def test_the_reference_is_chosen_when_nothing_else_is_within_tolerance():
    table = [m("fp32", [100, 100], 0.80, folder="float", ref=True), m("int8", [300, 310], 0.70)]
    d = decide(table, Tolerance(top1_points=0.5))
    assert d.chosen.name == "fp32" and d.speedup["int8"] == pytest.approx(np.median([100 / 300, 100 / 310]))


def test_without_labels_fidelity_decides():
    table = [
        m("fp32", [100, 100], None, 1.0, folder="float", ref=True),
        m("int8", [200, 210], None, 0.995),
        m("int8-ee", [260, 250], None, 0.97, ee=True),
    ]
    assert decide(table, Tolerance(cosine=0.02)).chosen.name == "int8"
    d = decide(table, Tolerance(cosine=0.03))
    assert d.metric == "cosine" and d.chosen.name == "int8-ee"
    assert d.shortfall["int8-ee"] == pytest.approx(0.03)


def test_random_weights_are_chosen_by_speed_alone():
    table = [m("fp32", [100, 120], folder="float", ref=True), m("int8", [95, 135])]
    d = decide(table)
    assert d.metric == "none" and d.chosen.name == "int8"  # median 115 vs 110
    rec = decision_record(d, table)
    assert rec["tolerance_applied"] == "no accuracy check (random weights)"


def test_an_unmeasured_accuracy_is_never_within_tolerance():
    table = [m("fp32", [100], 0.8, folder="float", ref=True), m("int8", [500], None)]
    d = decide(table)
    assert d.chosen.name == "fp32" and "int8 (not measured below FP32)" in d.reason


def test_record_holds_every_figure():
    d = decide(AMX)
    rec = decision_record(d, AMX)
    assert rec["chosen"] == "bf16-ee" and rec["metric"] == "top1"
    assert rec["tolerance"] == {"top1_points": 0.5, "cosine": 0.02}
    by = {c["name"]: c for c in rec["candidates"]}
    assert by["int8-ee"]["within_tolerance"] is False and by["fp32"]["reference"] is True
    assert by["bf16"]["throughput_fps_rounds"] == [700, 640, 780] and by["bf16"]["throughput_fps_median"] == 700
    assert by["bf16-ee"]["chosen_speedup"] is None and by["fp32"]["chosen_speedup"] == pytest.approx(840 / 310)


@pytest.mark.parametrize(
    ("table", "error", "message"),
    [
        ([m("int8", [1])], OvclipError, "exactly one FP32 f32 full-depth measurement (got 0)"),
        ([m("a", [1], ref=True), m("b", [1], ref=True)], OvclipError, "(got 2)"),
        ([m("a", [1, 2], ref=True), m("b", [1])], ValueError, "the same rounds (got [1, 2])"),
    ],
)
def test_bad_tables_are_refused(table, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        decide(table)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"top1_points": -1}, "tolerance=-1: give accuracy points"), ({"cosine": 3}, "fidelity_tolerance=3: give")],
)
def test_bad_tolerance_is_one_line(kwargs, message):
    with pytest.raises(OvclipError, match=message):
        Tolerance(**kwargs)


class FakeManifest(dict):
    folder = "some/folder"


@pytest.mark.parametrize(
    ("data", "precision", "early_exit"),
    [
        ({}, "f32", False),  # no record, no policy
        ({"exit_policy": {"rule": "gate"}}, "f32", True),  # no record: f32, exits on where there is a policy
        ({"exit_policy": {"r": 1}, "deployed": {"inference_precision": "bf16", "early_exit": False}}, "bf16", False),
        ({"exit_policy": {"r": 1}, "deployed": {"inference_precision": None, "early_exit": True}}, None, True),
        ({"deployed": {"inference_precision": "f16", "early_exit": True}}, "f16", False),  # no policy: no exits
    ],
)
def test_deployed_record_is_read_back(data, precision, early_exit):
    manifest = FakeManifest(data)
    assert deployed_precision(manifest) == precision
    assert deployed_early_exit(manifest) is early_exit


def test_unknown_deployed_precision_is_one_line():
    with pytest.raises(OvclipError, match="some/folder: deployed inference_precision 'i4' is none of f32, bf16, f16"):
        deployed_precision(FakeManifest({"deployed": {"inference_precision": "i4"}}))
