"""Where the images of an embedding job come from, streamed one at a time in a fixed order.

Three kinds of source, told apart by what SRC is:

- a **folder tree**: every image file (`ovclip.data.images.is_image_name`) below the folder, hidden files and
  folders skipped, symbolic links to folders not followed, in sorted order (folder by folder, names by code point);
- an **image list** (any other file): one image path per line, relative to the list's folder unless absolute;
  blank lines and lines starting with `#` are ignored;
- a **captions JSONL** (`.jsonl`): one `{"image": path, "caption": text}` object per line, as
  `ovclip.data.datasets.load_captions` reads it; consecutive lines naming the same image make one item with all
  their captions (an image named again further down is a second item: keep each image's lines together).

Nothing is decoded here and nothing but the current folder's listing (or line) is held: a source of any size is
walked in constant memory, and walking it twice gives the same items in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ovclip.data.caption_line import parse_caption_line
from ovclip.data.images import is_image_name
from ovclip.errors import OvclipError

KINDS = ("folder", "list", "captions")
_IGNORED_DIRS = {"__MACOSX"}


@dataclass(frozen=True)
class Item:
    path: str  # absolute path of the image file (not resolved: symbolic links are kept as named)
    captions: tuple[str, ...] | None = None  # captions JSONL sources only


@dataclass(frozen=True)
class Source:
    kind: str  # folder | list | captions
    path: Path  # absolute

    def items(self) -> Iterator[Item]:
        """The source's images, in a fixed order."""
        if self.kind == "folder":
            return _walk(self.path)
        if self.kind == "list":
            return _list_items(self.path)
        return _caption_items(self.path)

    def count(self) -> int:
        """Number of items (walks the source without decoding anything)."""
        return sum(1 for _ in self.items())

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path)}


def open_source(src: str | Path) -> Source:
    """The source SRC names: a folder tree, a `.jsonl` captions file, or an image list file."""
    p = Path(src).absolute()
    if not p.exists():
        raise OvclipError(f"{p}: no such folder or file; pass an image folder, an image list or a captions .jsonl")
    if p.is_dir():
        return Source("folder", p)
    if not p.is_file():
        raise OvclipError(f"{p}: not a folder or a regular file; pass an image folder, an image list or a .jsonl")
    if is_image_name(p):
        raise OvclipError(f"{p}: is an image, not a collection; pass its folder, or a list file naming it")
    return Source("captions" if p.suffix.lower() == ".jsonl" else "list", p)


def _walk(root: Path) -> Iterator[Item]:
    def onerror(e: OSError) -> None:
        raise OvclipError(f"{e.filename}: cannot list the folder ({e.strerror}); make it readable") from None

    for folder, dirs, files in os.walk(root, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _IGNORED_DIRS)
        for name in sorted(files):
            if is_image_name(name):
                yield Item(os.path.join(folder, name))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line, read as UTF-8 one line at a time."""
    n = 0
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):  # noqa: B007 - n is read in the except clause
                if line.strip():
                    yield n, line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise OvclipError(f"{path}, line {n + 1}: not valid UTF-8; save the file as UTF-8") from None
    except OSError as e:
        raise OvclipError(f"{path}: cannot be read ({e.strerror or e}); check the path and its permissions") from None


def _absolute(base: Path, name: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(name)))


def _list_items(path: Path) -> Iterator[Item]:
    found = False
    for _, line in _lines(path):
        name = line.strip()
        if name.startswith("#"):
            continue
        found = True
        yield Item(_absolute(path.parent, name))
    if not found:
        raise OvclipError(f"{path}: the image list names no images; write one image path per line")


def _caption_items(path: Path) -> Iterator[Item]:
    current: str | None = None
    captions: list[str] = []
    for n, line in _lines(path):
        name, caption = parse_caption_line(path, n, line)
        image = _absolute(path.parent, name)
        if image != current and current is not None:
            yield Item(current, tuple(captions))
            captions = []
        current = image
        captions.append(caption)
    if current is None:
        raise OvclipError(f"{path}: no captions (the file is empty); write one JSON object per line")
    yield Item(current, tuple(captions))
