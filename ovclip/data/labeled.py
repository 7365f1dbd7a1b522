"""`LabeledImages`: images with one class label each, the one interface bench and calibration read data through.

Two storage backends:
- in-memory uint8 grayscale arrays (Fashion-MNIST, the built-in sets): `pixels()` runs
  `preprocess_gray_batch`, which equals `preprocess()` of each image as a PIL 'L' image;
- a list of image files (image folders): `pixels()` decodes lazily per request.

The constructors live in `ovclip.data.datasets` (files, folders, Fashion-MNIST) and `ovclip.data.builtin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovclip.data.images import load_image
from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig, preprocess, preprocess_gray_batch


def select_rows(n: int, idx) -> np.ndarray:
    """Row numbers for an int, a slice, an int array or a boolean mask (numpy semantics)."""
    return np.atleast_1d(np.arange(n)[idx])


def load_pixels(paths: Sequence[Path], cfg: PreprocessConfig) -> np.ndarray:
    out = np.empty((len(paths), 3, cfg.size, cfg.size), np.float32)
    for i, p in enumerate(paths):
        out[i] = preprocess(load_image(p), cfg)
    return out


@dataclass
class LabeledImages:
    """Images with one class label each (built by `ovclip.data.datasets` and `ovclip.data.builtin`)."""

    class_names: list[str]
    prompt_names: list[str] | None
    labels: np.ndarray
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    gray: np.ndarray | None = field(default=None, repr=False)  # (N, H, W) uint8 backend
    paths: list[Path] | None = field(default=None, repr=False)  # file backend, one path per label

    def __post_init__(self) -> None:
        self.class_names = list(self.class_names)
        self.prompt_names = list(self.prompt_names) if self.prompt_names is not None else list(self.class_names)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.prompt_names) != len(self.class_names):
            raise OvclipError(
                f"{self.source}: {len(self.class_names)} class names but {len(self.prompt_names)} prompt names"
            )
        if (self.gray is None) == (self.paths is None):
            raise ValueError("LabeledImages needs exactly one of gray= (uint8 arrays) or paths= (image files)")
        if self.gray is not None and (self.gray.dtype != np.uint8 or self.gray.ndim != 3):
            raise ValueError(f"gray images must be uint8 (N, H, W); got {self.gray.dtype} {self.gray.shape}")
        if self.paths is not None:
            self.paths = [Path(p) for p in self.paths]
        n_images = len(self.gray) if self.gray is not None else len(self.paths)
        if n_images != len(self.labels):
            raise ValueError(f"{n_images} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise OvclipError(f"{self.source}: labels outside 0..{len(self.class_names) - 1}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def pixels(self, idx: np.ndarray | slice, cfg: PreprocessConfig) -> np.ndarray:
        """Preprocessed images of the selected rows: float32 (n, 3, cfg.size, cfg.size)."""
        sel = select_rows(len(self), idx)
        if self.gray is not None:
            return preprocess_gray_batch(self.gray[sel], cfg)
        return load_pixels([self.paths[i] for i in sel], cfg)

    def subset(self, idx: np.ndarray | slice, source: str | None = None) -> LabeledImages:
        """The selected rows as a new set (same classes; arrays are copies)."""
        sel = select_rows(len(self), idx)
        return LabeledImages(
            class_names=self.class_names,
            prompt_names=self.prompt_names,
            labels=self.labels[sel].copy(),
            source=source or f"{self.source}, subset of {len(sel):,}",
            skipped=list(self.skipped),
            gray=self.gray[sel].copy() if self.gray is not None else None,
            paths=[self.paths[i] for i in sel] if self.paths is not None else None,
        )
