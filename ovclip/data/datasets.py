"""Labelled image sets and caption files, opened from a spec, a folder or Fashion-MNIST's idx files.

Every set is a `LabeledImages` (`ovclip.data.labeled`): Fashion-MNIST and the built-in sets as uint8 arrays;
image folders as file lists, every file decoded once up front by `image_folder()` (bad files go to
`skipped`, or raise with `strict=True`).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovclip.data.builtin import builtin_calibration, builtin_classes, builtin_eval
from ovclip.data.caption_line import parse_caption_line
from ovclip.data.fashion_mnist import _FILES as _FMNIST_FILES
from ovclip.data.fashion_mnist import CLASS_NAMES, DEBIAN_PATH, load_split
from ovclip.data.imagenet import imagenet_layout
from ovclip.data.images import existing_folder, is_image_name, load_image
from ovclip.data.labeled import LabeledImages, load_pixels, select_rows
from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig
from ovclip.progress import Progress, advance

__all__ = [
    "Captions",
    "LabeledImages",
    "builtin_calibration",
    "builtin_eval",
    "fashion_mnist",
    "image_folder",
    "load_captions",
    "open_dataset",
    "read_labels_file",
]

LABELS_FILE_NAMES = ("labels.json", "labels.txt")  # picked up by open_dataset() inside an image folder
_IGNORED_DIRS = {"__MACOSX"}


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_DIRS


# --------------------------------------------------------------------------------------------------
# validation pass, reported to a progress callback


def _validate_files(
    items: Sequence[Path],
    *,
    strict: bool,
    what: str,
    notes: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> tuple[list[bool], list[tuple[str, str]]]:
    """Decode every file once. Returns (ok flags, skipped (file, reason)); with strict, raise on the first."""
    ok: list[bool] = []
    skipped: list[tuple[str, str]] = []
    for i, p in enumerate(items):
        try:
            load_image(p)
            ok.append(True)
        except OvclipError as e:
            note = f" ({notes[i]})" if notes else ""
            if strict:
                raise OvclipError(f"{e}{note} [strict mode: fix or remove it, or run without strict]") from None
            reason = str(e)
            prefix = f"{p}: "
            skipped.append((str(p), (reason[len(prefix) :] if reason.startswith(prefix) else reason) + note))
            ok.append(False)
        advance(progress, f"checking {what}", (i + 1) / len(items))
    return ok, skipped


# --------------------------------------------------------------------------------------------------
# labels files


def _decode_utf8(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise OvclipError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.exists():
        raise OvclipError(f"{what} {path} not found; check the path")
    if path.is_dir():
        raise OvclipError(f"{what} {path} is a folder; pass a file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise OvclipError(f"{what} {path} cannot be read ({e.strerror or e})") from None


def _check_names(path: Path, names: list[str], where: Sequence[str], kind: str) -> list[str]:
    seen: dict[str, str] = {}
    out = []
    for raw, loc in zip(names, where, strict=True):
        if not isinstance(raw, str):
            raise OvclipError(f"{path}, {loc}: {kind} must be a string, got {raw!r}")
        name = _nfc(raw.strip())
        if not name:
            raise OvclipError(f"{path}, {loc}: empty {kind}; give every class a name")
        if name in seen:
            raise OvclipError(f"{path}, {loc}: duplicate {kind} {name!r} (also at {seen[name]}); names must be unique")
        seen[name] = loc
        out.append(name)
    return out


def read_labels_file(path: str | Path) -> tuple[list[str], list[str]]:
    """(class names, prompt names) from a labels file.

    Text: one class name per line (UTF-8; blank lines at the end are ignored, elsewhere they are an
    error); prompt names = class names. JSON: {"labels": [...], "prompt_names": [...] (optional)}.
    """
    path = Path(path)
    text = _decode_utf8(path, _read_bytes(path, "labels file"))
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise OvclipError(f"{path}, line {e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(d, dict) or not isinstance(d.get("labels"), list):
            raise OvclipError(f'{path}: JSON labels file must be an object {{"labels": [...], "prompt_names": [...]}}')
        labels = _check_names(path, d["labels"], [f"labels[{i}]" for i in range(len(d["labels"]))], "class name")
        prompts = d.get("prompt_names")
        if prompts is None:
            prompts = list(labels)
        else:
            if not isinstance(prompts, list) or len(prompts) != len(labels):
                n = len(prompts) if isinstance(prompts, list) else type(prompts).__name__
                raise OvclipError(f"{path}: prompt_names must be a list as long as labels ({len(labels)}); got {n}")
            prompts = _check_names(path, prompts, [f"prompt_names[{i}]" for i in range(len(prompts))], "prompt name")
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        labels = _check_names(path, lines, [f"line {i + 1}" for i in range(len(lines))], "class name")
        prompts = list(labels)
    if not labels:
        raise OvclipError(f"{path}: no class names; write one class name per line")
    return labels, prompts


# --------------------------------------------------------------------------------------------------
# image folders


def _list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), hidden files and folders ignored, sorted by relative path."""
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(_hidden(part) for part in rel.parts) or not is_image_name(p):
            continue
        if p.is_file() or p.is_symlink():
            found.append(p)
    return sorted(found, key=lambda q: q.relative_to(folder).as_posix())


def _class_folders(root: Path) -> dict[str, Path]:
    try:
        entries = list(root.iterdir())
    except OSError as e:
        raise OvclipError(f"{root}: cannot list the folder ({e.strerror or e})") from None
    visible = [e for e in entries if not _hidden(e.name)]
    if not visible:
        raise OvclipError(f"{root}: folder is empty; put the images in one subfolder per class")
    folders = {_nfc(e.name): e for e in visible if e.is_dir()}
    if not folders:
        raise OvclipError(
            f"{root}: no class subfolders; put the images in one subfolder per class (the folder name is the class)"
        )
    return folders


def _map_classes(root: Path, folders: dict[str, Path], labels_file: Path) -> tuple[list[str], list[str], list[Path]]:
    labels, prompts = read_labels_file(labels_file)
    by_name = [name in folders for name in labels]
    if all(by_name):
        extra = sorted(set(folders) - set(labels))
        if extra:
            raise OvclipError(
                f"{root}: class folder(s) {', '.join(map(repr, extra))} not listed in {labels_file}; "
                "add them to the labels file or move them out"
            )
        return labels, prompts, [folders[name] for name in labels]
    if not any(by_name) and len(labels) == len(folders):
        # positional: line i names the i-th class folder in sorted order (e.g. WordNet-id folders)
        return labels, prompts, [folders[k] for k in sorted(folders)]
    missing = [name for name, hit in zip(labels, by_name, strict=True) if not hit]
    raise OvclipError(
        f"{labels_file}: {len(labels)} class names do not match the {len(folders)} subfolders of {root} "
        f"(no folder for {', '.join(map(repr, missing[:3]))}{'...' if len(missing) > 3 else ''}); list the folder "
        "names, or exactly one name per folder in sorted folder order"
    )


def image_folder(
    path: str | Path,
    *,
    labels_file: str | Path | None = None,
    strict: bool = False,
    progress: Progress | None = None,
) -> LabeledImages:
    """Images in one subfolder per class.

    Class names are the subfolder names, sorted, unless `labels_file` is given: it then fixes the
    order and names, either by naming the folders, or (if none of its names is a folder) positionally,
    one name per folder in sorted folder order. Image files are found recursively by extension
    (case-insensitive); hidden files and folders are ignored. Every image is decoded once here:
    unreadable ones are recorded in `skipped` (or raise with `strict=True`).
    """
    root = existing_folder(path, "a folder with one subfolder per class")
    folders = _class_folders(root)
    if labels_file is not None:
        lf = Path(labels_file)
        if not lf.exists() and not lf.is_absolute() and (root / lf).exists():
            lf = root / lf
        class_names, prompt_names, class_dirs = _map_classes(root, folders, lf)
    elif (imagenet := imagenet_layout(root, folders)) is not None:  # WordNet-id folders: CLIP's ImageNet names
        (class_names, prompt_names), class_dirs = imagenet, [folders[k] for k in imagenet[0]]
    else:
        class_names = sorted(folders)
        prompt_names, class_dirs = list(class_names), [folders[k] for k in class_names]

    skipped: list[tuple[str, str]] = []
    stray = sorted(p for p in root.iterdir() if p.is_file() and is_image_name(p))
    skipped += [(str(p), "image file outside any class folder; move it into its class folder") for p in stray]

    files: list[Path] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        imgs = _list_images(d)
        if not imgs:
            raise OvclipError(f"{d}: class folder {class_names[c]!r} holds no images; add images or remove the folder")
        files += imgs
        labels += [c] * len(imgs)

    ok, bad = _validate_files(files, strict=strict, what=f"{len(files):,} images in {root}", progress=progress)
    skipped += bad
    files_all = files
    bad_reason = dict(zip((i for i, good in enumerate(ok) if not good), (r for _, r in bad), strict=True))
    keep = np.flatnonzero(ok)
    files = [files_all[i] for i in keep]
    label_arr = np.asarray(labels, np.int64)[keep]
    for c, name in enumerate(class_names):
        if not np.any(label_arr == c):
            first = next(i for i, good in enumerate(ok) if not good and labels[i] == c)
            raise OvclipError(
                f"{class_dirs[c]}: none of the images of class {name!r} could be read "
                f"(first: {files_all[first]}: {bad_reason[first]}); fix them or remove the class"
            )
    note = f", {len(skipped)} skipped" if skipped else ""
    return LabeledImages(
        class_names=class_names,
        prompt_names=prompt_names,
        labels=label_arr,
        source=f"image folder {root} ({len(files):,} images, {len(class_names)} classes{note})",
        skipped=skipped,
        paths=files,
    )


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST


def _fmnist_names() -> tuple[list[str], list[str]]:
    labels, prompts = builtin_classes()
    if tuple(labels) != CLASS_NAMES:  # the shipped prompt names only apply to the same classes
        return list(CLASS_NAMES), list(CLASS_NAMES)
    return labels, prompts


def _has_idx(root: Path, split: str) -> bool:
    return all((root / f).exists() or (root / (f + ".gz")).exists() for f in _FMNIST_FILES[split])


def fashion_mnist(split: str = "test", root: str | Path = DEBIAN_PATH) -> LabeledImages:
    """A Fashion-MNIST split read from idx files (plain or .gz); default: Debian's dataset-fashion-mnist."""
    root = Path(root)
    if not root.is_dir():
        hint = (
            "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
            if root == DEBIAN_PATH
            else "pass the folder holding the idx files"
        )
        raise OvclipError(f"Fashion-MNIST folder {root} not found; {hint}")
    images, labels = load_split(split, root)
    if images.ndim != 3:
        raise OvclipError(f"{root}: {split} images have shape {images.shape}; expected (N, 28, 28)")
    class_names, prompt_names = _fmnist_names()
    return LabeledImages(
        class_names=class_names,
        prompt_names=prompt_names,
        labels=labels,
        source=f"Fashion-MNIST {split} split, {len(labels):,} images from {root}",
        gray=np.ascontiguousarray(images),
    )


# --------------------------------------------------------------------------------------------------
# one entry point for the CLI

_SPEC_HELP = (
    "use 'builtin', 'builtin:calibration', 'fashion-mnist[:train|:test]', a folder holding Fashion-MNIST idx "
    "files (optionally ':train' or ':test'), or an image folder with one subfolder per class"
)


def open_dataset(spec: str | None, *, strict: bool = False, progress: Progress | None = None) -> LabeledImages:
    """Resolve a dataset argument. See `_SPEC_HELP`; an image folder's `labels.json`/`labels.txt` is used."""
    if spec is None or spec in ("builtin", "builtin:eval"):
        return builtin_eval()
    if spec == "builtin:calibration":
        return builtin_calibration()
    if spec.startswith("builtin"):
        raise OvclipError(f"unknown built-in set {spec!r}; use 'builtin' (eval) or 'builtin:calibration'")
    if spec in ("fashion-mnist", "fashion-mnist:test", "fashion-mnist:train"):
        return fashion_mnist(spec.partition(":")[2] or "test")
    if spec.startswith("fashion-mnist:"):
        raise OvclipError(f"unknown Fashion-MNIST split in {spec!r}; use 'fashion-mnist:train' or 'fashion-mnist:test'")

    path, split = Path(spec), None
    if not path.exists():
        head, _, tail = spec.rpartition(":")
        if tail in ("train", "test") and head and Path(head).is_dir():
            path, split = Path(head), tail
    if path.is_dir():
        if split is not None:
            if not _has_idx(path, split):
                raise OvclipError(f"{path}: no Fashion-MNIST {split} idx files here; {_SPEC_HELP}")
            return fashion_mnist(split, root=path)
        for s in ("test", "train"):
            if _has_idx(path, s):
                return fashion_mnist(s, root=path)
        labels_file = next((path / n for n in LABELS_FILE_NAMES if (path / n).is_file()), None)
        return image_folder(path, labels_file=labels_file, strict=strict, progress=progress)
    if path.exists():
        raise OvclipError(f"{spec} is a file, not a data set; {_SPEC_HELP}")
    raise OvclipError(f"data set {spec!r} not found; {_SPEC_HELP}")


# --------------------------------------------------------------------------------------------------
# captions (image-text retrieval)


@dataclass
class Captions:
    """Captions of images: caption i describes image `image_paths[image_index[i]]`."""

    image_paths: list[Path]
    captions: list[str]
    image_index: np.ndarray
    source: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def pixels(self, idx: np.ndarray | slice, cfg: PreprocessConfig) -> np.ndarray:
        """Preprocessed images (rows of `image_paths`): float32 (n, 3, cfg.size, cfg.size)."""
        sel = select_rows(len(self.image_paths), idx)
        return load_pixels([self.image_paths[i] for i in sel], cfg)


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    text = _decode_utf8(path, _read_bytes(path, "captions file"))
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, line


def load_captions(path: str | Path, *, strict: bool = False, progress: Progress | None = None) -> Captions:
    """Read a JSONL captions file: one {"image": path, "caption": text} object per line.

    Relative image paths are relative to the JSONL file's folder. Several captions may share an
    image (images are deduplicated). Malformed lines are errors (with their line number); images
    that are missing or unreadable are skipped with their captions (recorded in `skipped`) unless
    `strict`.
    """
    path = Path(path)
    base = path.parent
    rows: list[tuple[int, Path, str]] = []
    for n, line in _lines(path):
        image, caption = parse_caption_line(path, n, line)
        rows.append((n, Path(base, image).resolve(), caption))
    if not rows:
        raise OvclipError(f"{path}: no captions (the file is empty); write one JSON object per line")

    unique: dict[Path, list[int]] = {}
    for n, p, _ in rows:
        unique.setdefault(p, []).append(n)
    images = list(unique)
    notes = [f"line{'s' if len(ns) > 1 else ''} {', '.join(map(str, ns))} of {path.name}" for ns in unique.values()]
    ok, skipped = _validate_files(
        images, strict=strict, what=f"{len(images):,} caption images", notes=notes, progress=progress
    )
    kept = [p for p, good in zip(images, ok, strict=True) if good]
    if not kept:
        raise OvclipError(f"{path}: none of the {len(images)} images could be read (first: {skipped[0][1]})")
    row_of = {p: i for i, p in enumerate(kept)}
    caps = [(row_of[p], c) for _, p, c in rows if p in row_of]
    note = f", {len(skipped)} images skipped" if skipped else ""
    return Captions(
        image_paths=kept,
        captions=[c for _, c in caps],
        image_index=np.asarray([i for i, _ in caps], np.int64),
        source=f"captions {path} ({len(caps):,} captions of {len(kept):,} images{note})",
        skipped=skipped,
    )
