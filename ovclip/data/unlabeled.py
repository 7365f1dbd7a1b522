"""Images without labels: a flat folder, any tree of folders, or a list of image paths.

`UnlabeledImages` streams preprocessed pixels by index like `LabeledImages` (files are decoded lazily per
request, after one validation pass that decodes every file once: unreadable ones go to `skipped`, or raise
with `strict=True`). It has no labels (`labels is None`), so what needs them (zero-shot accuracy) is not
measured on it; what does not (speed, exits, FLOPs, embedding fidelity) is.

`open_images(spec, labels=...)` is the entry point bench uses: labelled sets as `open_dataset` opens them,
and flat folders, image lists, or (with `labels=False`) any folder as `UnlabeledImages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ovclip.data.datasets import LabeledImages, _list_images, _validate_files, open_dataset
from ovclip.data.images import existing_folder, is_image_name, load_image
from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig, preprocess
from ovclip.progress import Progress

__all__ = [
    "IMAGE_LIST_SUFFIXES",
    "UnlabeledImages",
    "image_list",
    "open_images",
    "unlabeled_images",
    "without_labels",
]

IMAGE_LIST_SUFFIXES = (".txt", ".lst", ".list")  # a text file of image paths, one per line


@dataclass
class UnlabeledImages:
    """Images with no class labels: image files (`unlabeled_images`, `image_list`), or a labelled set read
    without its labels (`without_labels`)."""

    paths: list[Path] | None
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    base: LabeledImages | None = field(default=None, repr=False)  # a labelled set whose labels are not used
    labels: None = None  # LabeledImages' attribute names, empty: nothing here has a class
    class_names: None = None
    prompt_names: None = None

    def __post_init__(self) -> None:
        if (self.paths is None) == (self.base is None):
            raise ValueError("UnlabeledImages needs exactly one of paths= (image files) or base= (a labelled set)")
        if self.paths is not None:
            self.paths = [Path(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self.base)

    def pixels(self, idx: np.ndarray | slice, cfg: PreprocessConfig) -> np.ndarray:
        """Preprocessed images of the selected rows: float32 (n, 3, cfg.size, cfg.size)."""
        if self.base is not None:
            return self.base.pixels(idx, cfg)
        sel = np.atleast_1d(np.arange(len(self.paths))[idx])
        out = np.empty((len(sel), 3, cfg.size, cfg.size), np.float32)
        for k, i in enumerate(sel):
            out[k] = preprocess(load_image(self.paths[i]), cfg)
        return out

    def subset(self, idx: np.ndarray | slice, source: str | None = None) -> UnlabeledImages:
        sel = np.atleast_1d(np.arange(len(self))[idx])
        src = source or f"{self.source}, subset of {len(sel):,}"
        if self.base is not None:
            return UnlabeledImages(None, src, list(self.skipped), base=self.base.subset(sel))
        return UnlabeledImages([self.paths[i] for i in sel], src, list(self.skipped))


def without_labels(data: LabeledImages) -> UnlabeledImages:
    """A labelled set read as unlabeled images (its labels are not used)."""
    return UnlabeledImages(None, f"{data.source}, labels not used", list(data.skipped), base=data)


def _checked(files: list[Path], what: str, where: Path, strict: bool, progress: Progress | None) -> UnlabeledImages:
    ok, skipped = _validate_files(files, strict=strict, what=f"{len(files):,} images in {where}", progress=progress)
    kept = [p for p, good in zip(files, ok, strict=True) if good]
    if not kept:
        raise OvclipError(
            f"{where}: none of the {len(files)} images could be read (first: {skipped[0][0]}: "
            f"{skipped[0][1]}); fix them or point to other images"
        )
    note = f", {len(skipped)} skipped" if skipped else ""
    return UnlabeledImages(kept, f"{what} {where} ({len(kept):,} images, unlabeled{note})", skipped)


def unlabeled_images(path: str | Path, *, strict: bool = False, progress: Progress | None = None) -> UnlabeledImages:
    """Every image file under `path` (recursively; hidden files and folders ignored), sorted by relative path,
    with no labels: folder names are not read as classes."""
    root = existing_folder(path, "a folder of images or an image list (.txt)")
    files = _list_images(root)
    if not files:
        raise OvclipError(f"{root}: no image files (by extension) in this folder or below; add images")
    return _checked(files, "images in", root, strict, progress)


def image_list(path: str | Path, *, strict: bool = False, progress: Progress | None = None) -> UnlabeledImages:
    """Images named in a text file, one path per line (relative paths are relative to the file's folder; blank
    lines and lines starting with '#' are ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise OvclipError(f"image list {path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    files = []
    for n, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not is_image_name(entry):
            raise OvclipError(
                f"{path}, line {n}: {entry[:80]!r} is not an image file name; list one image path per line"
            )
        files.append((path.parent / entry).resolve())
    if not files:
        raise OvclipError(f"{path}: the image list is empty; write one image path per line")
    return _checked(files, "image list", path, strict, progress)


def _has_idx_files(root: Path) -> bool:
    return any(p.name.endswith(("-idx3-ubyte", "-idx3-ubyte.gz")) for p in root.iterdir())


def _flat(root: Path) -> bool:
    """A folder with images at its top level and no subfolder: no class structure to read."""
    entries = [e for e in root.iterdir() if not e.name.startswith(".")]
    return any(e.is_file() and is_image_name(e) for e in entries) and not any(e.is_dir() for e in entries)


def open_images(
    spec: str | None,
    *,
    labels: Literal["auto"] | bool = "auto",
    strict: bool = False,
    progress: Progress | None = None,
) -> LabeledImages | UnlabeledImages:
    """A data set with or without labels. `labels="auto"`: a flat folder of images or an image list (.txt/.lst)
    is unlabeled, anything else is opened by `open_dataset` (class subfolders, Fashion-MNIST, built-in sets);
    `labels=False`: a folder is read as unlabeled images whatever its layout, any other set without its labels;
    `labels=True`: `open_dataset`."""
    if labels not in ("auto", True, False):
        raise OvclipError(f"labels={labels!r}: choose 'auto', True or False", params="labels")
    path = None if labels is True or spec is None else Path(spec)
    if path is not None and path.is_file() and path.suffix.lower() in IMAGE_LIST_SUFFIXES:
        return image_list(path, strict=strict, progress=progress)
    if path is not None and path.is_dir() and (labels is False or _flat(path)) and not _has_idx_files(path):
        return unlabeled_images(path, strict=strict, progress=progress)
    data = open_dataset(spec, strict=strict, progress=progress)
    return without_labels(data) if labels is False else data
