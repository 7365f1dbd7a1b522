"""Image preprocessing as CLIP does it: RGB, shortest side resized (bicubic), centre crop, normalise.

Pure numpy + Pillow so the runtime needs no torch. The configuration travels with a deployment folder
as `preprocessor_config.json` in Hugging Face's `CLIPImageProcessor` key layout.

The numbers are those of transformers' `CLIPImageProcessor` (its Pillow backend) for any PIL image
(tests/test_preprocess_parity.py checks every image kind, within 1e-6):

- colour: an image with transparency (an alpha band, or a palette/'L'/'RGB' image with a transparent
  colour) is composited onto white, anything else is `convert("RGB")`; as the reference does.
  Images loaded from files by `ovclip.data.images.load_image` are RGB already (EXIF orientation applied,
  alpha dropped), which is what transformers' own `load_image` gives; see that module for the details;
- resize: the short side becomes `shortest_edge` and the long side `int(shortest_edge * long / short)`,
  truncated as transformers and torchvision compute it (not rounded), with Pillow's resampling filter;
- centre crop: offsets `(resized - crop) // 2` (floor), as transformers crops. (torchvision's
  `CenterCrop`, which OpenAI's own transform uses, rounds half to even and can sit one pixel further
  down or right when the difference is odd; ovclip follows transformers);
- rescale and normalise in float32: `x * float32(1/255)`, then `(x - mean) / std`. transformers rescales
  in float64 and rounds to float32, which differs in the last bit for about half the uint8 values (at most
  2.3e-7 after normalising); ovclip keeps float32 so the pixels of the shipped Fashion-MNIST sets, on which
  every published figure was measured, stay bit-identical.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ovclip.errors import OvclipError

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
    """`size` is the square crop (the model's input size); `shortest_edge` the short side after resizing
    (None: the same as `size`, as every CLIP checkpoint we know of uses)."""

    size: int = 224
    mean: tuple[float, float, float] = field(default=CLIP_MEAN)
    std: tuple[float, float, float] = field(default=CLIP_STD)
    resample: str = "bicubic"
    shortest_edge: int | None = None

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise OvclipError(f"unknown resampling filter {self.resample!r}; use one of {', '.join(_RESAMPLE)}")
        if self.shortest_edge is not None and self.shortest_edge < self.size:
            raise OvclipError(
                f"preprocessing resizes the short side to {self.shortest_edge} px but crops {self.size} px; "
                "set size.shortest_edge at least as large as crop_size in preprocessor_config.json"
            )

    @property
    def resize_to(self) -> int:
        return self.shortest_edge or self.size

    def to_hf_dict(self) -> dict:
        code = {v: k for k, v in _RESAMPLE_CODES.items()}[self.resample]
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.resize_to},
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
        size = _edge(d.get("crop_size") or d.get("size") or 224)
        resize = _edge(d.get("size") or size)
        resample = d.get("resample", 3)
        resample = _RESAMPLE_CODES.get(resample, resample) if isinstance(resample, int) else resample
        return cls(
            size=size,
            mean=tuple(d.get("image_mean", CLIP_MEAN)),
            std=tuple(d.get("image_std", CLIP_STD)),
            resample=str(resample),
            shortest_edge=None if resize == size else resize,
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_hf_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> PreprocessConfig:
        return cls.from_hf_dict(json.loads(path.read_text()))

    def as_dict(self) -> dict:
        return asdict(self)


def _edge(size: int | dict) -> int:
    if isinstance(size, dict):
        size = size.get("shortest_edge") or size.get("height")
    return int(size)


def resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to `shortest_edge`: the long side is truncated,
    `int(shortest_edge * long / short)`, exactly as transformers' `get_resize_output_image_size` and
    torchvision's `Resize` compute it."""
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The centre `size` square of a (width, height) image as transformers' `center_crop` takes it."""
    left, top = (width - size) // 2, (height - size) // 2
    return left, top, left + size, top + size


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize the shortest side to `cfg.resize_to` and take the centre `cfg.size` square, keeping the mode."""
    nw, nh = resized_size(*img.size, cfg.resize_to)
    if (nw, nh) != img.size:
        img = img.resize((nw, nh), _RESAMPLE[cfg.resample])
    if (nw, nh) != (cfg.size, cfg.size):
        img = img.crop(crop_box(nw, nh, cfg.size))
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as `CLIPImageProcessor` converts a PIL image: transparency composited onto white, else `convert`.

    An RGB image may carry a transparent colour too (`info["transparency"]`, e.g. a palette PNG with a
    transparent index after `convert("RGB")`): its pixels of that colour become white, as in the reference.
    """
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def normalize(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) with CLIP's mean/std."""
    x = pixels.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One PIL image of any mode -> float32 (3, size, size), as `CLIPImageProcessor` gives it."""
    return normalize(np.asarray(resize_and_crop(to_rgb(img), cfg)), cfg)


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
