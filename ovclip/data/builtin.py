"""The data that ships inside the package (`ovclip/assets/builtin/`): two Fashion-MNIST subsets,
the class names with their prompt names, and the prompt templates.

- `eval_fashion_mnist_test2000.npz`: 2,000 test-split images, 200 per class (the built-in eval set);
- `calibration_fashion_mnist_train6000.npz`: 6,000 train-split images (calibration / exit-head data);
  both hold `images` uint8 (N, 28, 28), `labels` int64 (N,), `source_index` (row in the original split).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ovclip.data.labeled import LabeledImages
from ovclip.errors import OvclipError

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "builtin"
EVAL_FILE = "eval_fashion_mnist_test2000.npz"
CALIBRATION_FILE = "calibration_fashion_mnist_train6000.npz"


def _asset(name: str) -> Path:
    path = ASSET_DIR / name
    if not path.is_file():
        raise OvclipError(f"built-in data file {path} is missing; the ovclip installation is incomplete, reinstall it")
    return path


def _read_json(name: str) -> dict:
    path = _asset(name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OvclipError(f"built-in data file {path} is damaged ({e}); reinstall ovclip") from None


def builtin_classes() -> tuple[list[str], list[str]]:
    """(label names, prompt names) of the built-in Fashion-MNIST classes, from `classes.json`."""
    d = _read_json("classes.json")
    labels, prompts = list(d["labels"]), list(d.get("prompt_names") or d["labels"])
    if len(labels) != len(prompts):
        raise OvclipError(f"{ASSET_DIR / 'classes.json'}: {len(labels)} labels but {len(prompts)} prompt names")
    return labels, prompts


def builtin_template_sets() -> dict[str, list[str]]:
    """All template lists of `templates.json` by kind (`train`, `eval`)."""
    return {k: list(v) for k, v in _read_json("templates.json").items() if isinstance(v, list)}


def load_npz(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images uint8 (N, 28, 28), labels int64 (N,), source_index int64 (N,) of one shipped subset."""
    path = _asset(name)
    with np.load(path) as d:
        images, labels = d["images"], d["labels"].astype(np.int64)
        source_index = d["source_index"].astype(np.int64) if "source_index" in d else np.arange(len(labels))
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
        raise OvclipError(f"built-in data file {path} is damaged (images {images.shape} {images.dtype}); reinstall")
    return images, labels, source_index


def _builtin(name: str, what: str) -> LabeledImages:
    images, labels, _ = load_npz(name)
    class_names, prompt_names = builtin_classes()
    return LabeledImages(
        class_names=class_names,
        prompt_names=prompt_names,
        labels=labels,
        source=f"built-in {what}: {len(labels):,} Fashion-MNIST images ({name})",
        gray=images,
    )


def builtin_eval() -> LabeledImages:
    """The shipped eval set: 2,000 Fashion-MNIST test images, 200 per class."""
    return _builtin(EVAL_FILE, "eval set")


def builtin_calibration() -> LabeledImages:
    """The shipped calibration set: 6,000 Fashion-MNIST training images (disjoint from the eval set's split)."""
    return _builtin(CALIBRATION_FILE, "calibration set")
