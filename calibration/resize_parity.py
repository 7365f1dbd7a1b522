"""How far training pixels made in torch are from what ovclip.preprocess feeds the model at inference.

    python calibration/resize_parity.py            # on the shipped 2,000 eval images

Compares, in normalised units (the model's input), over every pixel of every image:
- `ovclip.preprocess_torch` (what train_builtin.py uses) against `ovclip.preprocess` (Pillow): expected 0;
- plain `torch.nn.functional.interpolate(mode="bicubic")` against `ovclip.preprocess`: the shortcut that is
  not the same resize (kernel a = -0.75 vs Pillow's -0.5, no 8-bit rounding), with and without rounding
  its output to 8 bits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ovclip.data.builtin import builtin_eval  # noqa: E402
from ovclip.preprocess import PreprocessConfig, preprocess_gray_batch  # noqa: E402
from ovclip.preprocess_torch import TorchPreprocess  # noqa: E402


def interpolate_pixels(gray: np.ndarray, cfg: PreprocessConfig, round8: bool) -> np.ndarray:
    x = torch.from_numpy(gray).float()[:, None]
    y = F.interpolate(x, size=(cfg.size, cfg.size), mode="bicubic", align_corners=False)
    if round8:
        y = y.round().clamp(0, 255)
    y = y * np.float32(1 / 255)
    mean = torch.tensor(cfg.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(cfg.std, dtype=torch.float32)[None, :, None, None]
    return ((y - mean) / std).numpy()


def stats(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.float64) - b)
    return {"mean_abs": float(d.mean()), "max_abs": float(d.max()), "share_of_pixels_differing": float((d > 0).mean())}


def main() -> None:
    data, cfg = builtin_eval(), PreprocessConfig()
    prep = TorchPreprocess(28, 28, cfg)
    out = {name: [] for name in ("preprocess_torch", "interpolate_bicubic", "interpolate_bicubic_rounded")}
    for i in range(0, len(data), 250):
        gray = data.gray[i : i + 250]
        ref = preprocess_gray_batch(gray, cfg)
        out["preprocess_torch"].append(stats(prep.gray(torch.from_numpy(gray)).numpy(), ref))
        out["interpolate_bicubic"].append(stats(interpolate_pixels(gray, cfg, False), ref))
        out["interpolate_bicubic_rounded"].append(stats(interpolate_pixels(gray, cfg, True), ref))
    summary = {
        name: {
            "mean_abs": float(np.mean([r["mean_abs"] for r in rows])),
            "max_abs": float(max(r["max_abs"] for r in rows)),
            "share_of_pixels_differing": float(np.mean([r["share_of_pixels_differing"] for r in rows])),
        }
        for name, rows in out.items()
    }
    print(json.dumps({"images": data.source, "units": "normalised model input", **summary}, indent=2))


if __name__ == "__main__":
    main()
