"""What `quantize --calibration` reads: labelled sets, images without labels, or images with captions.

- a tree of class folders, Fashion-MNIST, the built-in sets: `LabeledImages` (today's labelled calibration);
- a flat folder of images, an image list (.txt/.lst/.list), or any folder with `labels=False`:
  `UnlabeledImages` (`ovclip.data.unlabeled`);
- a captions JSONL ({"image": path, "caption": text} per line): `CaptionedImages`, one row per image with
  every caption of it (no class labels; the exit heads can learn from the captions).

NNCF's INT8 statistics need pixels only; the exit calibration reads labels where there are some (`labels`
is None otherwise) and captions where there are some (`caption_lists`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ovclip.data.datasets import Captions, LabeledImages, load_captions
from ovclip.data.labeled import select_rows
from ovclip.data.prompts import all_prompts, builtin_templates
from ovclip.data.unlabeled import UnlabeledImages, open_images
from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig
from ovclip.progress import Progress

CAPTION_SUFFIXES = (".jsonl",)
CALIBRATION_HELP = (
    "'builtin:calibration', a folder with one subfolder per class (labelled), a flat folder or any tree of images "
    "with no_labels (unlabeled), an image list (.txt, one path per line), or a captions JSONL "
    '({"image": ..., "caption": ...} per line)'
)


@dataclass
class CaptionedImages:
    """The images of a captions file, one row per image, with the captions of each (no class labels)."""

    captions: Captions
    rows: np.ndarray | None = None  # image rows of `captions` this set holds (None: all)
    labels: None = None  # LabeledImages' attribute names, empty: nothing here has a class
    class_names: None = None
    prompt_names: None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = np.arange(len(self.captions.image_paths))
            self.skipped = list(self.captions.skipped)

    @property
    def source(self) -> str:
        n, total = len(self.rows), len(self.captions.image_paths)
        return self.captions.source if n == total else f"{self.captions.source}, subset of {n:,} images"

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, idx: np.ndarray | slice, cfg: PreprocessConfig) -> np.ndarray:
        return self.captions.pixels(self.rows[select_rows(len(self), idx)], cfg)

    def subset(self, idx: np.ndarray | slice) -> CaptionedImages:
        return CaptionedImages(self.captions, self.rows[select_rows(len(self), idx)], skipped=list(self.skipped))

    def caption_lists(self) -> list[list[str]]:
        """Every caption of each image, in row order."""
        by_image: dict[int, list[str]] = {}
        for i, text in zip(self.captions.image_index.tolist(), self.captions.captions, strict=True):
            by_image.setdefault(i, []).append(text)
        return [by_image[int(r)] for r in self.rows]


CalibrationImages = LabeledImages | UnlabeledImages | CaptionedImages


def open_calibration(
    spec: str | None,
    *,
    labels: Literal["auto"] | bool = "auto",
    strict: bool = False,
    progress: Progress | None = None,
) -> CalibrationImages:
    """The calibration set `spec` names (see `CALIBRATION_HELP`; None: the built-in calibration set).
    `labels=False` reads any folder (class subfolders included) as unlabeled images; `strict` stops on the
    first unreadable image instead of skipping it."""
    spec = "builtin:calibration" if spec is None else spec
    path = Path(spec)
    if path.suffix.lower() in CAPTION_SUFFIXES:
        if not path.is_file():
            raise OvclipError(f"captions file {path} not found; check the path", params="calibration")
        if labels is True:
            raise OvclipError(f"{path}: a captions file has no class labels; drop labels=True", params="labels")
        return CaptionedImages(load_captions(path, strict=strict, progress=progress))
    return open_images(spec, labels=labels, strict=strict, progress=progress)


def readable_summary(data: CalibrationImages) -> str:
    """'N readable images' and, where files were skipped, how many and the first reason."""
    text = f"{len(data):,} readable image{'s' if len(data) != 1 else ''}"
    if data.skipped:
        first, why = data.skipped[0]
        text += f" ({len(data.skipped):,} unreadable, skipped; first: {first}: {why})"
    return text


def calibration_texts(data: CalibrationImages) -> list[str]:
    """Text the INT8 text tower is calibrated on: the class prompts of a labelled set (the built-in training
    templates), the captions of a captions file; images alone carry no text (one-line error)."""
    if data.prompt_names is not None:
        return all_prompts(data.prompt_names, builtin_templates("train"))
    if isinstance(data, CaptionedImages):
        return list(data.captions.captions)
    raise OvclipError(
        f"{data.source}: an INT8 text tower is calibrated on text, and these images have no labels or captions; "
        "quantize the text tower as fp16 (text='fp16'), or calibrate on a labelled folder or a captions JSONL",
        params=("text", "calibration"),
    )
