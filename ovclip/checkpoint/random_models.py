"""Seeded random-weight CLIP models in real checkpoint shapes: for speed measurements only.

`random:<name>` reads `ovclip/configs/random-<name>.json`, an open_clip-style model config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ovclip.checkpoint.openai_layout import ClipShape
from ovclip.errors import OvclipError

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPModel

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SEED = 0


def known_random_models() -> list[str]:
    return sorted(p.stem.removeprefix("random-") for p in CONFIG_DIR.glob("random-*.json"))


def random_config(name: str) -> tuple[ClipShape, str]:
    """The shape and the one-line description of `random:<name>`."""
    path = CONFIG_DIR / f"random-{name}.json"
    if not path.is_file():
        known = ", ".join(f"random:{n}" for n in known_random_models()) or "none"
        raise OvclipError(f"unknown random model 'random:{name}' (no {path}); known: {known}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OvclipError(f"{path}: not valid JSON ({e}); fix the file") from e
    return ClipShape.from_open_clip_dict(d, str(path)), str(d.get("description", name))


def build_random_model(config: CLIPConfig, seed: int = SEED) -> CLIPModel:
    """`CLIPModel(config)` initialised after `torch.manual_seed(seed)`, without disturbing the caller's RNG."""
    import torch
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config)
