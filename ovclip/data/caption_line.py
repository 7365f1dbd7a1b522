"""One line of a captions JSONL file: {"image": path, "caption": text}, checked, with its line number in errors."""

from __future__ import annotations

import json
from pathlib import Path

from ovclip.errors import OvclipError


def parse_caption_line(path: Path, n: int, line: str) -> tuple[str, str]:
    """(image path as written, caption), both stripped; a malformed line is a one-line error naming `path`, `n`."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise OvclipError(
            f"{path}, line {n}: malformed JSON ({e.msg} at column {e.colno}); "
            'each line must be one object like {"image": "a.jpg", "caption": "a dog"}'
        ) from None
    if not isinstance(obj, dict):
        raise OvclipError(f'{path}, line {n}: expected a JSON object {{"image": ..., "caption": ...}}')
    missing = [k for k in ("image", "caption") if k not in obj]
    if missing:
        raise OvclipError(f"{path}, line {n}: missing key(s) {', '.join(map(repr, missing))}")
    image, caption = obj["image"], obj["caption"]
    if not isinstance(image, str) or not image.strip():
        raise OvclipError(f"{path}, line {n}: 'image' must be a non-empty path string")
    if not isinstance(caption, str):
        raise OvclipError(f"{path}, line {n}: 'caption' must be a string, got {type(caption).__name__}")
    if not caption.strip():
        raise OvclipError(f"{path}, line {n}: empty caption")
    return image.strip(), caption.strip()
