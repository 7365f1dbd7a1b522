"""The built-in model's training recipe on a tiny config: resumable to the same weights, device/precision
choice, augmentation on the device, and the training pixels equal to inference preprocessing."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ovclip.data.builtin import load_npz
from ovclip.preprocess import PreprocessConfig, preprocess_gray_batch

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("train_builtin", ROOT / "calibration" / "train_builtin.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_builtin"] = mod
    spec.loader.exec_module(mod)
    return mod


R = _recipe()


def tiny_spec() -> dict:
    spec, _, _ = R.load_recipe()
    spec = copy.deepcopy(spec)
    spec["projection_dim"] = 16
    spec["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    spec["vision_config"].update(image_size=32, patch_size=16)  # 28 -> 32 px: a non-integer resize
    spec["text_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    spec["train"].update(epochs=2, batch_size=16)
    return spec


def tiny_data(spec):
    images, labels, _ = load_npz("calibration_fashion_mnist_train6000.npz")
    _, classes, templates = R.load_recipe()
    return R.make_data(spec, classes, templates, images[:64], labels[:64], images[64:96], labels[64:96], "cpu")


def _run(spec, data, work, **kw) -> R.Run:
    return R.Run(spec, data, torch.device("cpu"), "fp32", work, log=lambda m: None, **kw)


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    spec = tiny_spec()
    data = tiny_data(spec)  # 64 images, batch 16: 4 steps per epoch, 8 steps in all
    full, step, total, _ = R.train(_run(spec, data, tmp_path / "a"))
    assert (step, total) == (8, 8)

    first = _run(spec, data, tmp_path / "b", stop_after=3, save_every=100)
    _, step, _, _ = R.train(first)  # cut short mid-epoch: the state is saved where it stopped
    assert step == 3
    stops = iter([False, False, True])  # a signal arrives: stop between steps, saved
    _, step, _, _ = R.train(_run(spec, data, tmp_path / "b", should_stop=lambda: next(stops)))
    assert step == 5
    resumed_run = _run(spec, data, tmp_path / "b")
    resumed, step, _, _ = R.train(resumed_run)
    assert step == 8
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    epochs = [h for h in resumed_run.history if "epoch" in h]
    assert [h["epoch"] for h in epochs] == [1, 2] and all(0 <= h["holdout_top1"] <= 1 for h in epochs)
    assert [h["segment_from_step"] for h in resumed_run.history if "segment_from_step" in h] == [0, 3, 5]


def test_training_moves_the_weights_and_refuses_a_foreign_state(tmp_path):
    spec = tiny_spec()
    data = tiny_data(spec)
    init = R.build_model(spec, spec["train"]["seed"]).state_dict()
    model, *_ = R.train(_run(spec, data, tmp_path, stop_after=2))
    assert not torch.equal(init["visual_projection.weight"], model.state_dict()["visual_projection.weight"])
    other = copy.deepcopy(spec)
    other["train"]["lr"] = 0.5
    with pytest.raises(SystemExit, match="was saved by a different recipe or data set; delete it"):
        R.train(_run(other, data, tmp_path))


def test_bf16_autocast_step_runs_on_cpu(tmp_path):
    spec = tiny_spec()
    run = R.Run(spec, tiny_data(spec), torch.device("cpu"), "bf16", tmp_path, stop_after=1, log=lambda m: None)
    model, step, _, _ = R.train(run)
    assert step == 1 and all(torch.isfinite(p).all() for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32  # autocast: master weights stay fp32


def test_precision_choice_from_cpu_flags(tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert R.pick_precision("auto", cpu, {"avx512f", "avx512_vnni"}) == "fp32"  # this project's Ice Lake
    assert R.pick_precision("auto", cpu, {"amx_bf16", "amx_tile"}) == "bf16"
    assert R.pick_precision("auto", cpu, {"avx512_bf16"}) == "bf16"  # e.g. AMD Zen 4
    assert R.pick_precision("auto", cuda, {"amx_bf16"}) == "fp32"
    assert R.pick_precision("bf16", cpu, set()) == "bf16"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16\n")
    assert {"avx512_bf16", "amx_bf16"} <= R.cpu_flags(str(info))
    assert R.cpu_flags(str(tmp_path / "missing")) == set()


def test_device_augmentation_is_seeded_and_bounded():
    x = load_npz("eval_fashion_mnist_test2000.npz")[0][:64]
    aug = {"hflip": 0.5, "max_shift_px": 2, "erase_prob": 0.25}
    a = R.augment(x, np.random.default_rng([0, 5]), aug)
    assert np.array_equal(a, R.augment(x, np.random.default_rng([0, 5]), aug))
    assert not np.array_equal(a, R.augment(x, np.random.default_rng([0, 6]), aug))
    # no erasing, no flips, no shift: the images come back unchanged
    same = R.augment(x, np.random.default_rng(1), {"hflip": 0.0, "max_shift_px": 0, "erase_prob": 0.0})
    assert np.array_equal(same, x)
    # always flipped, never shifted or erased: a mirror image
    flipped = R.augment(x, np.random.default_rng(1), {"hflip": 1.0, "max_shift_px": 0, "erase_prob": 0.0})
    assert np.array_equal(flipped, x[:, :, ::-1])
    # always erased: every image has a zeroed rectangle of 4..11 x 4..11 px where it had ink
    erased = R.augment(x, np.random.default_rng(2), {"hflip": 0.0, "max_shift_px": 0, "erase_prob": 1.0})
    changed = (erased != x).reshape(len(x), -1).sum(1)
    assert (erased[erased != x] == 0).all() and changed.max() <= 11 * 11


def test_training_pixels_equal_inference_pixels():
    x = load_npz("eval_fashion_mnist_test2000.npz")[0][::50]
    cfg = PreprocessConfig()
    np.testing.assert_array_equal(R.to_pixels(x, cfg).numpy(), preprocess_gray_batch(x, cfg))
