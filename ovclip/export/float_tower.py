"""A checkpoint's towers as in-memory FP32 IR, the vision tower one IR per block: what quantization calibrates
block by block and the exit calibration reads activations from."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov

from ovclip.export.exporter import convert_text, convert_vision_stage
from ovclip.ir import compile_f32, run_batched

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint


@dataclass
class FloatTower:
    """The FP32 vision tower of a checkpoint as one IR per block (block 1 holds the stem, the last block
    CLIP's pooling and projection), and the text tower."""

    stages: list[ov.Model]
    text: ov.Model

    @classmethod
    def convert(cls, ckpt: LoadedCheckpoint, static_batch: int | None = None) -> FloatTower:
        n = ckpt.model.config.vision_config.num_hidden_layers
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = [convert_vision_stage(ckpt.model, i, i + 1, static_batch) for i in range(n)]
            text = convert_text(ckpt.model, static_batch)
        return cls(blocks, text)

    def activations(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Output of every stage on `pixels`, in FP32."""
        outs, x = [], pixels
        for s in self.stages:
            x = run_batched(compile_f32(s), x)
            outs.append(x)
        return outs
