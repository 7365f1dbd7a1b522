"""What the exit calibration reads from the backbone: one pass of every calibration image through the INT8 and
the FP32 blocks, keeping the pooled patch tokens and SAV after each candidate exit and the final embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov

from ovclip.ir import compile_f32
from ovclip.progress import Progress, note
from ovclip.vectors import l2_normalize

if TYPE_CHECKING:
    from ovclip.data.datasets import LabeledImages
    from ovclip.preprocess import PreprocessConfig


@dataclass
class Features:
    pooled: dict[int, np.ndarray]  # INT8 patch-token mean after block L, (N, D)
    sav: dict[int, np.ndarray]  # INT8 spatial-activation variance after block L, (N,)
    fp32_pooled: dict[int, np.ndarray]  # FP32 patch-token mean after block L (and L - 1, for the NSR)
    int8_final: np.ndarray  # (N, E) INT8 full-depth embedding, normalised
    fp32_final: np.ndarray


def collect_features(
    blocks: list[ov.Model],
    fp32_blocks: list[ov.Model],
    data: LabeledImages,
    preprocess: PreprocessConfig,
    layers: list[int],
    chunk: int = 200,
    progress: Progress | None = None,
) -> Features:
    """Run every image through the INT8 and FP32 blocks once, keeping what the heads and INR need (`blocks` that
    are `fp32_blocks`, a float tower's exits: one pass serves both)."""
    same = blocks is fp32_blocks
    q = [compile_f32(b) for b in blocks]
    f = q if same else [compile_f32(b) for b in fp32_blocks]
    want = set(layers)
    pooled: dict[int, list] = {L: [] for L in layers}
    sav: dict[int, list] = {L: [] for L in layers}
    fpool: dict[int, list] = {L: [] for L in [*layers, *[L - 1 for L in layers if L > 1]]}
    finals, ffinals = [], []
    n = len(data)
    for i in range(0, n, chunk):
        px = data.pixels(np.arange(i, min(n, i + chunk)), preprocess)
        for compiled, store_int8 in ((q, True),) if same else ((q, True), (f, False)):
            x = px
            for k, c in enumerate(compiled):
                x = np.array(c(x)[0])
                layer = k + 1
                if layer < len(compiled):
                    patches = x[:, 1:, :]
                    mean = patches.mean(1)
                    if store_int8 and layer in want:
                        pooled[layer].append(mean)
                        sav[layer].append(((patches - mean[:, None]) ** 2).sum(-1).mean(-1))
                    if (same or not store_int8) and layer in fpool:
                        fpool[layer].append(mean)
            (finals if store_int8 else ffinals).append(l2_normalize(x))
            if same:
                ffinals.append(finals[-1])
        note(progress, f"exit features: {min(n, i + chunk)}/{n} images")
    return Features(
        {k: np.concatenate(v) for k, v in pooled.items()},
        {k: np.concatenate(v) for k, v in sav.items()},
        {k: np.concatenate(v) for k, v in fpool.items() if v},
        np.concatenate(finals),
        np.concatenate(ffinals),
    )
