"""`ovclip.preprocess` for whole batches in torch, on any device, bit for bit the same numbers.

For training on a GPU (calibration/train_builtin.py): a batch of same-size uint8 images is resized, cropped
and normalised on the device instead of image by image in Pillow. The resize is Pillow's own algorithm,
not `torch.nn.functional.interpolate` (whose bicubic kernel is a = -0.75, Pillow's a = -0.5, and which
neither rounds to 8 bits between the two passes nor widens the kernel when shrinking):

- Pillow precomputes, per output pixel, the filter taps over the input, normalises them to sum 1 and
  stores them as fixed-point integers with 22 fractional bits (`PRECISION_BITS = 32 - 8 - 2`);
- it resizes horizontally first into an 8-bit image, then vertically, each pass summing
  `pixel * tap` in integers from `1 << 21` and keeping `clip(sum >> 22, 0, 255)`.

Here the taps are the same integers, held in float64 matrices: every product and sum is an integer below
2^53, so float64 matmuls compute them exactly, on CPU or GPU. Normalising goes through a 256-entry table
per channel made by `ovclip.preprocess.normalize` itself. tests/test_preprocess_torch.py checks equality
with `ovclip.preprocess` (and so with Pillow) over many sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig, crop_box, normalize, resized_size

PRECISION_BITS = 32 - 8 - 2
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


_FILTERS = {"bicubic": _bicubic, "bilinear": _triangle}


def pillow_taps(in_size: int, out_size: int, resample: str = "bicubic") -> np.ndarray:
    """(out_size, in_size) int64 fixed-point taps of Pillow's 8-bit resampling along one axis."""
    if resample not in _FILTERS:
        raise OvclipError(f"torch preprocessing supports {', '.join(_FILTERS)} resampling, not {resample!r}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[resample] * filterscale
    ss = 1.0 / filterscale
    one = 1 << PRECISION_BITS
    taps = np.zeros((out_size, in_size), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(0, int(center - support + 0.5))
        xmax = min(in_size, int(center + support + 0.5))
        w = [_FILTERS[resample]((x + xmin - center + 0.5) * ss) for x in range(xmax - xmin)]
        total = sum(w)  # added one by one, left to right, as Pillow does
        if total != 0.0:
            w = [v / total for v in w]
        taps[xx, xmin:xmax] = [int(-0.5 + v * one) if v < 0 else int(0.5 + v * one) for v in w]
    return taps


def _pass(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """One Pillow pass along the last axis: (..., in) float64 holding uint8 values -> (..., out), the same."""
    acc = x @ taps.T + float(1 << (PRECISION_BITS - 1))
    return torch.floor(acc / float(1 << PRECISION_BITS)).clamp_(0, 255)


class _Axis:
    """One axis of resize + crop: Pillow's taps for the kept outputs, or (no resampling on this axis) a slice."""

    def __init__(self, in_size: int, out_size: int, lo: int, hi: int, resample: str, device: torch.device):
        self.taps = None
        self.keep = slice(lo, hi)
        if out_size != in_size:  # Pillow skips a pass whose size does not change
            taps = pillow_taps(in_size, out_size, resample)[lo:hi]
            self.taps = torch.from_numpy(taps).to(device, torch.float64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.keep] if self.taps is None else _pass(x, self.taps)


class TorchPreprocess:
    """Resize, crop and normalise batches of same-size uint8 images as `ovclip.preprocess` does."""

    def __init__(self, height: int, width: int, cfg: PreprocessConfig, device: str | torch.device = "cpu"):
        self.cfg, self.device, self.shape = cfg, torch.device(device), (height, width)
        nw, nh = resized_size(width, height, cfg.resize_to)
        left, top, right, bottom = crop_box(nw, nh, cfg.size)
        self._w = _Axis(width, nw, left, right, cfg.resample, self.device)
        self._h = _Axis(height, nh, top, bottom, cfg.resample, self.device)
        levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # one row of all 256 values
        lut = normalize(levels, cfg)[:, 0, :]  # (3, 256): ovclip.preprocess's number for each 8-bit value
        self.lut = torch.from_numpy(np.ascontiguousarray(lut)).to(self.device)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(..., H, W) uint8 -> (..., size, size) uint8: one band; colour images go band by band."""
        if tuple(images.shape[-2:]) != self.shape:
            raise OvclipError(f"images are {tuple(images.shape[-2:])}; this preprocessor was built for {self.shape}")
        x = self._w(images.to(self.device, torch.float64))  # horizontal pass first, as Pillow
        x = self._h(x.transpose(-1, -2)).transpose(-1, -2)
        return x.to(torch.uint8)

    def gray(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 grayscale -> (N, 3, size, size) float32, equal to `preprocess_gray_batch`."""
        idx = self.resize(images).long()
        return self.lut[:, idx].permute(1, 0, 2, 3).contiguous()
