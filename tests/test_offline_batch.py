"""The offline batch: chosen by measurement (rotating rounds over the same images), recorded by `ovclip deploy`,
reused by `ovclip bench` only on the device it was measured on.

The choice is checked against hand computations and against a workload whose speed per batch is known by
construction (a fixed cost per call, slept, so throughput grows with the batch); the bench records against the
folder's real manifest (the conftest FP32 folder, random weights: speed and mechanics only)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ovclip.bench.offline_batch import CANDIDATES, pick_batch, rebatch, tune_batch
from ovclip.bench.runner import BenchSettings, bench_folder
from ovclip.errors import OvclipError
from ovclip.folder import read_manifest, write_manifest
from ovclip.folder.deployed import deployed_batch
from ovclip.runtime.device import device_name


@pytest.mark.parametrize(
    ("medians", "tolerance", "expected"),
    [
        ({8: 100.0, 16: 120.0, 32: 125.0, 64: 126.0}, 0.03, 32),  # 125 >= 0.97 * 126 = 122.2; 120 is not
        ({8: 100.0, 16: 120.0, 32: 125.0, 64: 126.0}, 0.0, 64),
        ({8: 100.0, 16: 120.0, 32: 125.0, 64: 126.0}, 0.05, 16),  # 0.95 * 126 = 119.7
        ({8: 130.0, 16: 120.0, 32: 125.0}, 0.03, 8),
    ],
)
def test_pick_batch_keeps_the_smallest_batch_within_the_tolerance_of_the_fastest(medians, tolerance, expected):
    assert pick_batch(medians, tolerance) == expected


def test_pick_batch_without_measurements_is_an_error():
    with pytest.raises(OvclipError, match="no batch was measured"):
        pick_batch({})


def test_rebatch_keeps_the_images_in_order_and_drops_only_a_short_last_call():
    images = np.arange(20, dtype=np.float32).reshape(20, 1)
    calls = [images[i : i + 8] for i in range(0, 16, 8)] + [images[16:]]
    assert [len(c) for c in rebatch(calls, 16)] == [16]
    np.testing.assert_array_equal(rebatch(calls, 16)[0], images[:16])
    assert [len(c) for c in rebatch(calls, 5)] == [5, 5, 5, 5]
    np.testing.assert_array_equal(np.concatenate(rebatch(calls, 5)), images)
    (one,) = rebatch(calls, 64)  # fewer images than the batch: one call with all of them
    np.testing.assert_array_equal(one, images)


def test_tune_batch_picks_the_largest_batch_when_each_call_costs_the_same():
    """A call costs 4 ms whatever its size: img/s is batch / 4 ms, so 64 wins by far and every round is kept."""

    def run(batch: np.ndarray) -> None:
        time.sleep(0.004)

    images = [np.zeros((8, 1), np.float32)] * 16  # 128 images
    seen = []
    choice = tune_batch(run, images, nireq=1, seconds=0.15, rounds=2, on_result=lambda r, b, fps: seen.append((r, b)))
    assert choice.batch == 64 and choice.chosen_by == "measured"
    assert sorted(choice.throughput) == list(CANDIDATES)
    assert all(len(s["runs"]) == 2 for s in choice.throughput.values())
    assert sorted(seen) == sorted((r, b) for r in range(2) for b in CANDIDATES)
    fps = {b: s["median"] for b, s in choice.throughput.items()}
    assert fps[64] > 4 * fps[8]  # 8x in theory; sleep overshoot and thread start-up take some of it
    assert choice.as_dict()["throughput_fps"]["64"]["median"] == fps[64]


def test_tune_batch_caps_the_candidates_at_the_number_of_images():
    choice = tune_batch(lambda b: time.sleep(0.002), [np.zeros((10, 1), np.float32)], nireq=1, seconds=0.05, rounds=1)
    assert sorted(choice.throughput) == [8, 10]


def _record(batch, device="CPU", name="the CPU"):
    return {"deployed": {"device": device, "device_name": name, "offline_batch": {"batch": batch}}}


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (_record(32), 32),
        (_record(32, name="another CPU"), None),  # measured on another CPU model: measure again
        (_record(32, device="GPU"), None),
        (_record(0), None),
        (_record("32"), None),
        ({"deployed": {"device": "CPU", "device_name": "the CPU"}}, None),
        ({}, None),
    ],
)
def test_a_recorded_batch_is_reused_only_on_the_device_it_was_measured_on(manifest, expected):
    assert deployed_batch(manifest, "cpu", "the CPU") == expected


def test_bench_measures_one_offline_batch_per_folder_and_times_every_variant_at_it(fp32_folder):
    settings = BenchSettings(seconds=0.1, rounds=1, pool=64, accuracy=False, precision="f32")
    recs = bench_folder(fp32_folder, settings)
    choice = recs[0]["batch_choice"]
    assert choice["chosen_by"] == "measured" and sorted(map(int, choice["throughput_fps"])) == list(CANDIDATES)
    medians = {int(b): s["median"] for b, s in choice["throughput_fps"].items()}
    assert choice["batch"] == pick_batch(medians)
    assert all(r["batch"] == choice["batch"] and r["batch_choice"] == choice for r in recs)
    given = bench_folder(fp32_folder, BenchSettings(seconds=0.1, rounds=1, pool=64, accuracy=False, batch=4))
    assert all(r["batch"] == 4 and "batch_choice" not in r for r in given)


def test_bench_reuses_the_batch_recorded_on_this_device(fp32_folder, tmp_path):
    import shutil

    folder = tmp_path / "recorded"
    shutil.copytree(fp32_folder, folder)
    data = dict(read_manifest(folder).data)
    data.pop("files")
    data["deployed"] = {"inference_precision": "f32", "early_exit": False, "device": "CPU"}
    data["deployed"].update(device_name=device_name("CPU"), offline_batch={"batch": 16})
    write_manifest(folder, data)
    recs = bench_folder(folder, BenchSettings(seconds=0.1, rounds=1, pool=64, accuracy=False, precision="f32"))
    assert all(r["batch"] == 16 for r in recs)
    assert recs[0]["batch_choice"]["chosen_by"].startswith("recorded by `ovclip deploy` on this device")
