"""The model that ships in the package: its recorded accuracy, and the recipe's data pipeline."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovclip.checkpoint import BUILTIN_MODEL_DIR
from ovclip.data.builtin import builtin_eval
from ovclip.data.images import load_image
from ovclip.preprocess import PreprocessConfig, preprocess

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("train_builtin", ROOT / "calibration" / "train_builtin.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_builtin"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_recipe_pixels_equal_runtime_preprocessing(tmp_path):
    """The tensors the model was trained on are the tensors the runtime feeds it, for the same image."""
    recipe = _recipe()
    images = builtin_eval().subset(np.arange(0, 2000, 125))
    gray = np.load(ROOT / "ovclip/assets/builtin/eval_fashion_mnist_test2000.npz")["images"][0:2000:125]
    cfg = PreprocessConfig()
    train_side = recipe.to_pixels(gray, cfg).numpy()
    for i, a in enumerate(gray):
        path = tmp_path / f"{i}.png"
        Image.fromarray(a, mode="L").save(path)
        runtime_side = preprocess(load_image(path), cfg)
        assert np.array_equal(train_side[i], runtime_side), i
    assert np.array_equal(train_side, images.pixels(np.arange(len(images)), cfg))


def test_recipe_augmentation_is_seeded_and_changes_images():
    recipe = _recipe()
    x = np.load(ROOT / "ovclip/assets/builtin/eval_fashion_mnist_test2000.npz")["images"][:32]
    aug = {"hflip": 0.5, "max_shift_px": 2, "erase_prob": 0.25}
    a = recipe.augment(x, np.random.default_rng([0, 5]), aug)
    b = recipe.augment(x, np.random.default_rng([0, 5]), aug)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, x)
    assert a.shape == x.shape and a.dtype == np.uint8


@pytest.mark.skipif(not (BUILTIN_MODEL_DIR / "model.safetensors").exists(), reason="the built-in model is not built")
def test_builtin_model_matches_its_recorded_accuracy(tmp_path):
    """Export the shipped weights, run the shipped eval subset: the top-1 recorded when the model was made.

    A broken weight file, tokenizer, prompt set or preprocessing moves this by far more than 3 images.
    """
    sys.path.insert(0, str(ROOT / "calibration"))
    from record_builtin_eval import RECORD, measure

    from ovclip.checkpoint import load_checkpoint
    from ovclip.export import ExportOptions, export_deployment

    record = json.loads(RECORD.read_text())
    export_deployment(load_checkpoint("builtin"), tmp_path / "fp32", ExportOptions(exits="none"))
    now = measure(tmp_path / "fp32")
    assert now["n_images"] == record["n_images"] == 2000
    assert abs(now["top1"] - record["top1"]) <= 3 / 2000
    assert now["top1"] > 0.5  # far above chance (10%): the weights are a trained model
