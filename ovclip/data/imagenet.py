"""The ImageNet folder layout: one class folder per WordNet id (`n01440764`, ...), sorted order = class index.

An image folder whose class folders are all ImageNet-1k WordNet ids (the 1,000 of ILSVRC 2012, or a subset of
them) is read with the standard CLIP class names as prompt names and the WordNet ids as class labels; its
zero-shot templates are OpenAI's 80 ImageNet templates (`imagenet_templates("openai")`, or the 7-template
`"simple"` set). The lists ship in `ovclip/assets/imagenet/` (copied from `calibration/imagenet/`; origin and
licences in its NOTICE.md). A labels file in the folder overrides all of this.

`train/` as distributed and `val/` after the usual re-foldering (one folder per class) both have this layout.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path

from ovclip.errors import OvclipError

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "imagenet"
TEMPLATE_KINDS = ("openai", "simple")
_WNID = re.compile(r"^n\d{8}$")


def _read(name: str) -> dict:
    path = ASSET_DIR / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OvclipError(
            f"ImageNet data file {path} is missing; the ovclip installation is incomplete, reinstall it"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OvclipError(f"ImageNet data file {path} is damaged ({e}); reinstall ovclip") from None


@functools.cache
def _classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    rows = _read("classes.json")["classes"]
    wnids, names = zip(*rows, strict=True)
    if len(wnids) != 1000 or list(wnids) != sorted(set(wnids)):
        raise OvclipError(f"ImageNet data file {ASSET_DIR / 'classes.json'} is damaged; reinstall ovclip")
    return wnids, names


def imagenet_classes() -> tuple[list[str], list[str]]:
    """(WordNet ids, CLIP class names) of ImageNet-1k, in class-index order."""
    wnids, names = _classes()
    return list(wnids), list(names)


def imagenet_templates(kind: str = "openai") -> list[str]:
    """OpenAI's 80 ImageNet prompt templates (`openai`) or their 7-template subset (`simple`)."""
    if kind not in TEMPLATE_KINDS:
        raise OvclipError(f"unknown ImageNet template set {kind!r}; use one of {', '.join(TEMPLATE_KINDS)}")
    return list(_read("templates.json")[kind])


def is_wordnet_id(name: str) -> bool:
    return bool(_WNID.match(name))


def imagenet_layout(root: str | Path, folder_names: Iterable[str]) -> tuple[list[str], list[str]] | None:
    """(class labels, prompt names) for class folders named by ImageNet-1k WordNet ids, sorted by id; None when
    some folder name is not a WordNet id (not this layout). Folders named like WordNet ids outside ImageNet-1k
    are an error: there are no names to put into prompts for them."""
    found = sorted(folder_names)
    if not found or not all(is_wordnet_id(n) for n in found):
        return None
    wnids, names = _classes()
    index = {w: i for i, w in enumerate(wnids)}
    unknown = [n for n in found if n not in index]
    if unknown:
        raise OvclipError(
            f"{root}: {len(unknown)} of {len(found)} class folders are named like WordNet ids but are not "
            f"ImageNet-1k classes (first: {unknown[0]}); add a labels.txt naming the classes in sorted folder order"
        )
    return found, [names[index[n]] for n in found]


def _visible_dirs(path: Path) -> list[str]:
    try:
        return [e.name for e in path.iterdir() if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX"]
    except OSError:
        return []


def is_imagenet_folder(path: str | Path) -> bool:
    """True when `path` is a folder whose class folders are all ImageNet-1k WordNet ids (what picks the
    ImageNet templates for a `--data` / `--calibration` folder)."""
    p = Path(path)
    if not p.is_dir():
        return False
    names = _visible_dirs(p)
    wnids = set(_classes()[0])
    return bool(names) and all(n in wnids for n in names)
