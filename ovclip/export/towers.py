"""Torch modules for the exported graphs, built from the blocks of a transformers `CLIPModel`."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def _layer_call(layer: nn.Module):
    params = inspect.signature(layer.forward).parameters
    if "causal_attention_mask" in params:  # transformers 4.x

        def call(h: torch.Tensor) -> torch.Tensor:
            return layer(h, None, None)[0]

    else:

        def call(h: torch.Tensor) -> torch.Tensor:
            out = layer(h, attention_mask=None)
            return out[0] if isinstance(out, tuple) else out

    return call


class VisionStage(nn.Module):
    """Blocks [start, end) of the vision tower, with the stem on the first stage and the head on the last.

    First stage: pixel_values (B, 3, S, S) -> hidden (B, T, D). Middle stages: hidden -> hidden.
    Last stage: hidden -> image embedding (B, E), CLIP's post-LN on the class token and projection.
    A stage that is both first and last is the whole, unsplit tower.
    """

    def __init__(self, clip: nn.Module, start: int, end: int):
        super().__init__()
        vm = clip.vision_model
        n = len(vm.encoder.layers)
        self.first, self.last = start == 0, end == n
        self.embeddings = vm.embeddings if self.first else None
        self.pre_layrnorm = vm.pre_layrnorm if self.first else None
        self.layers = nn.ModuleList(vm.encoder.layers[start:end])
        self._calls = [_layer_call(layer) for layer in self.layers]
        self.post_layernorm = vm.post_layernorm if self.last else None
        self.projection = clip.visual_projection if self.last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre_layrnorm(self.embeddings(x)) if self.first else x
        for call in self._calls:
            h = call(h)
        if self.last:
            return self.projection(self.post_layernorm(h[:, 0, :]))
        return h


class TextTower(nn.Module):
    """input_ids (B, L) int64 -> text embedding (B, E), pooled at the first end-of-text token."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_text_features(input_ids=input_ids)
        return out if isinstance(out, torch.Tensor) else out.pooler_output
