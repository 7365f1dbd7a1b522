"""Shared fixtures: a tiny random CLIP saved as a Hugging Face folder, its FP32 deployment, real photos.

The tiny model (ViT 4x64, patch 32 at 64 px; text 2x64; embed 32) builds, exports and quantizes in seconds,
so the export/quantize/CLI tests run the real pipeline end to end. Every parameter is random (transformers
zero-initialises biases and sets norm scales to one, which would hide mapping errors), seeded, and drawn
without touching the caller's torch RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

IMAGE, PATCH, WIDTH, HEADS, V_LAYERS, T_LAYERS, EMBED = 64, 32, 64, 2, 4, 2, 32
STAGED_EXITS = "1,2,3"  # every block its own stage: the most cuts a 4-block tower can have


@dataclass(frozen=True)
class TinyClip:
    folder: Path  # save_pretrained output: config.json + model.safetensors
    model: object  # the torch CLIPModel the folder was saved from (the independent reference)


def tiny_config(*, vision_layers: int = V_LAYERS, hidden_act: str = "quick_gelu", intermediate: int = 4 * WIDTH):
    """The tiny CLIP's transformers config (the module docstring's shape unless overridden)."""
    from transformers import CLIPConfig

    common = {"hidden_size": WIDTH, "intermediate_size": intermediate, "num_attention_heads": HEADS}
    vision = {**common, "num_hidden_layers": vision_layers, "image_size": IMAGE, "patch_size": PATCH}
    text = {
        **common,
        "num_hidden_layers": T_LAYERS,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "eos_token_id": 49407,
        "bos_token_id": 49406,
        "pad_token_id": 0,
    }
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED)
    cfg.text_config.hidden_act = cfg.vision_config.hidden_act = hidden_act
    return cfg


def build_tiny_model(seed: int = 0, **config):
    """The tiny CLIP with every parameter random (`config`: overrides for `tiny_config`)."""
    import torch
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_config(**config)).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                is_norm_scale = ("norm" in name or "layrnorm" in name) and name.endswith("weight")
                p.copy_(torch.randn_like(p) * (0.1 if is_norm_scale else 0.05) + (1.0 if is_norm_scale else 0.0))
            model.logit_scale.fill_(2.0)
    return model


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> TinyClip:
    folder = tmp_path_factory.mktemp("tiny-clip")
    model = build_tiny_model()
    model.save_pretrained(folder)
    return TinyClip(folder, model)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_clip):
    from ovclip.checkpoint import load_checkpoint

    return load_checkpoint(str(tiny_clip.folder))


@pytest.fixture(scope="session")
def fp32_folder(tiny_ckpt, tmp_path_factory) -> Path:
    """The tiny model exported as FP32 IR, vision tower split after blocks 1, 2 and 3."""
    from ovclip.export import ExportOptions, export_deployment

    out = tmp_path_factory.mktemp("deploy") / "fp32"
    export_deployment(tiny_ckpt, out, ExportOptions(exits=STAGED_EXITS))
    return out


@dataclass(frozen=True)
class CliExport:
    exit_code: int
    output: str
    folder: Path


@pytest.fixture(scope="session")
def cli_export(tiny_clip, tmp_path_factory) -> CliExport:
    """`ovclip export --model <tiny folder> --exits none --static-batch 2`, run in-process through click.

    One export serves two files: test_cli checks the command, test_export uses the folder as the unsplit,
    static-shape (NPU-style) deployment. Exporting costs seconds per IR, so the suite shares it.
    """
    from click.testing import CliRunner

    from ovclip.cli import main

    out = tmp_path_factory.mktemp("cli-export") / "unsplit-static"
    args = ["export", "--model", str(tiny_clip.folder), "--out", str(out), "--exits", "none", "--static-batch", "2"]
    result = CliRunner().invoke(main, args)
    return CliExport(result.exit_code, result.output, out)


def _photo_arrays() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}


@pytest.fixture(scope="session")
def photos() -> list[Image.Image]:
    """Real CC0 photos from scikit-image, in different sizes and aspect ratios."""
    return [Image.fromarray(a) for a in _photo_arrays().values()]


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """An image folder with class subfolders (one real photo per class), as `--data` takes it."""
    root = tmp_path_factory.mktemp("photo-data")
    for name, a in _photo_arrays().items():
        (root / name).mkdir()
        Image.fromarray(a).save(root / name / f"{name}.png")
    return root
