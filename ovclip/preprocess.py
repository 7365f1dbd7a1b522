"""Image preprocessing as CLIP does it: RGB, shortest side resized (bicubic), centre crop, normalise.

Pure numpy + Pillow so the runtime needs no torch. The configuration travels with a deployment folder
as `preprocessor_config.json` in Hugging Face's `CLIPImageProcessor` key layout.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
# Pillow's integer codes, as Hugging Face stores them in preprocessor_config.json.
_RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 224
    mean: tuple[float, float, float] = field(default=CLIP_MEAN)
    std: tuple[float, float, float] = field(default=CLIP_STD)
    resample: str = "bicubic"

    def to_hf_dict(self) -> dict:
        code = {v: k for k, v in _RESAMPLE_CODES.items()}[self.resample]
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.size},
            "resample": code,
            "do_center_crop": True,
            "crop_size": {"height": self.size, "width": self.size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    @classmethod
    def from_hf_dict(cls, d: dict) -> PreprocessConfig:
        size = d.get("crop_size") or d.get("size") or 224
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        resample = d.get("resample", 3)
        resample = _RESAMPLE_CODES.get(resample, resample) if isinstance(resample, int) else resample
        return cls(
            size=int(size),
            mean=tuple(d.get("image_mean", CLIP_MEAN)),
            std=tuple(d.get("image_std", CLIP_STD)),
            resample=str(resample),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_hf_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> PreprocessConfig:
        return cls.from_hf_dict(json.loads(path.read_text()))

    def as_dict(self) -> dict:
        return asdict(self)


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize the shortest side to `cfg.size` and take the centre square, keeping the image mode."""
    w, h = img.size
    scale = cfg.size / min(w, h)
    nw, nh = max(cfg.size, round(w * scale)), max(cfg.size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _RESAMPLE[cfg.resample])
    left, top = (nw - cfg.size) // 2, (nh - cfg.size) // 2
    if (nw, nh) != (cfg.size, cfg.size):
        img = img.crop((left, top, left + cfg.size, top + cfg.size))
    return img


def normalize(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) with CLIP's mean/std."""
    x = pixels.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One RGB PIL image -> float32 (3, size, size)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return normalize(np.asarray(resize_and_crop(img, cfg)), cfg)


def preprocess_gray_batch(images: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(N, H, W) uint8 grayscale images -> (N, 3, size, size) float32.

    Resizes the single band and replicates it, which gives the same numbers as converting to RGB
    first (Pillow resamples each band alike) at a third of the cost; used for Fashion-MNIST.
    """
    out = np.empty((len(images), 3, cfg.size, cfg.size), np.float32)
    for i, a in enumerate(images):
        band = np.asarray(resize_and_crop(Image.fromarray(a, mode="L"), cfg))
        out[i] = normalize(np.repeat(band[:, :, None], 3, axis=2), cfg)
    return out
