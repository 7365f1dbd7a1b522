"""Write a deployment folder atomically: build it beside the target, rename it into place when complete."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ovclip.errors import OvclipError


def check_target(out: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse a target folder that may not be written (called again when writing; cheap to call early)."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise OvclipError(f"{out} already exists; pass `overwrite` to replace it", params="overwrite")
    if out.exists() and not out.is_dir():
        raise OvclipError(f"{out} exists and is not a folder; choose another `out`", params="out")
    if out.exists() and not _replaceable(out):
        raise OvclipError(
            f"{out} is not an ovclip deployment folder (no ovclip manifest.json, and files other than IR/JSON); "
            "`overwrite` replaces only deployment folders: choose another `out` or remove it yourself",
            params=("overwrite", "out"),
        )
    return out


@contextmanager
def staging_folder(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh sibling folder; on success it replaces the deployment folder `out` in one rename.

    Killing the process at any moment leaves either the old `out` or the new one, never a partial
    folder under the name `out` (leftover `.ovclip-tmp-*` siblings are ignored and cleaned next time).
    """
    with atomic_folder(check_target(out, overwrite=overwrite)) as tmp:
        yield tmp


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a fresh sibling of `out` that replaces it in one rename on success (and is removed on failure).

    The caller has already decided that `out` may be replaced (see `check_target`)."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.ovclip-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.ovclip-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if _exchange(tmp, out):  # one atomic swap: `out` is always a complete folder
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = out.parent / f".{out.name}.ovclip-tmp-old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _replaceable(folder: Path) -> bool:
    """`overwrite` may delete `folder` only if it is empty, holds an ovclip manifest, or holds nothing but
    IR and JSON files (a deployment folder whose manifest is damaged): never a folder of other files."""
    from ovclip.folder.manifest import FORMAT, MANIFEST

    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return True
    except (OSError, ValueError):
        pass
    return all(p.is_dir() or p.suffix.lower() in (".xml", ".bin", ".json") for p in folder.rglob("*"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
