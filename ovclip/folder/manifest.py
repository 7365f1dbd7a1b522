"""`manifest.json`: what a deployment folder holds, where it came from, and the sha256 of every file."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ovclip.errors import OvclipError

FORMAT = "ovclip-deployment"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("ovclip", "openvino", "nncf", "torch", "transformers", "numpy", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Manifest:
    folder: Path
    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def variant(self) -> str:
        return self.data["variant"]

    @property
    def trained(self) -> bool:
        return bool(self.data["source"].get("trained", False))

    @property
    def vision(self) -> dict[str, Any]:
        return self.data["vision"]

    def path(self, name: str) -> Path:
        return self.folder / name


def write_manifest(folder: Path, data: dict[str, Any]) -> Manifest:
    """Write manifest.json with the sha256 of every other file in the folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **data}
    body["files"] = {p.relative_to(folder).as_posix(): sha256(p) for p in files}
    body.setdefault("versions", library_versions())
    (folder / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=False))
    return Manifest(folder, body)


def read_manifest(folder: str | Path, *, verify: bool = True) -> Manifest:
    """Read and check a deployment folder's manifest; `verify` also checks every file's sha256."""
    folder = Path(folder)
    if not folder.exists():
        raise OvclipError(f"{folder}: no such deployment folder; create one with `ovclip export` or `ovclip quantize`")
    if not folder.is_dir():
        raise OvclipError(f"{folder}: not a folder; pass a deployment folder written by `ovclip export`/`quantize`")
    path = folder / MANIFEST
    if not path.exists():
        raise OvclipError(f"{folder}: no {MANIFEST}, so this is not an ovclip deployment folder (or it is incomplete)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OvclipError(f"{path}: unreadable manifest ({e}); re-export the folder") from None
    if not isinstance(data, dict):
        kind = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "null")
        raise OvclipError(f"{path}: not an ovclip manifest (a JSON {kind}, not an object)")
    if data.get("format") != FORMAT:
        raise OvclipError(f"{path}: not an ovclip manifest (format is {data.get('format')!r})")
    fv = data.get("format_version")
    if fv != FORMAT_VERSION:
        raise OvclipError(
            f"{path}: manifest format version {fv!r} is not supported by this ovclip (reads {FORMAT_VERSION}); "
            "re-export the folder or upgrade ovclip"
        )
    manifest = Manifest(folder, data)
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> list[str]:
    """Raise OvclipError on the first missing or altered file; return the checked names."""
    checked = []
    files = manifest.data.get("files")
    if not isinstance(files, dict) or not files:
        raise OvclipError(f"{manifest.folder}: the manifest lists no file checksums; re-export the folder")
    ir = [s.get("file") for s in manifest.data.get("vision", {}).get("stages", [])]
    ir.append(manifest.data.get("text", {}).get("file"))
    for key in ("exit_policy", "exit_policy_embedding"):
        ir += list((manifest.data.get(key) or {}).get("heads", {}).values())
    unlisted = sorted({f for f in ir if f and f not in files})
    if unlisted:
        raise OvclipError(f"{manifest.folder}: {unlisted[0]} is used but has no checksum in the manifest; re-export")
    for name, digest in files.items():
        p = manifest.folder / name
        if not p.exists():
            raise OvclipError(f"{manifest.folder}: file {name} listed in the manifest is missing; re-export the folder")
        if sha256(p) != digest:
            raise OvclipError(
                f"{manifest.folder}: {name} does not match its sha256 in the manifest (altered or corrupt); "
                "re-export the folder"
            )
        checked.append(name)
    return checked
