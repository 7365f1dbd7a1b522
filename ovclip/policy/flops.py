"""FLOPs per image, counted from the tower's shapes (1 multiply-add = 2 FLOPs; norms and softmax left out).

Per ViT block with T tokens, width D and MLP width M: q/k/v/out projections 4*T*D^2, attention
scores and mix 2*T^2*D, MLP 2*T*D*M multiply-adds. The stem adds the patch projection, the last stage
CLIP's projection, and each exit the SSA head (D*D + D*E) and its gate (E*C for the class scores).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def block_flops(tokens: int, width: int, mlp: int) -> int:
    return 2 * (4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * mlp)


def stem_flops(vision: Mapping) -> int:
    patches = vision["tokens"] - 1
    return 2 * patches * 3 * vision["patch_size"] ** 2 * vision["hidden_size"]


def head_flops(width: int, emb: int, classes: int = 0) -> int:
    return 2 * (width * width + width * emb + emb * classes)


def flops_to_exit(vision: Mapping, emb: int, layer: int, exits: list[int], classes: int = 0, heads: bool = True) -> int:
    """FLOPs spent on a sample that leaves after block `layer` (num_layers = full depth)."""
    n = vision["num_layers"]
    b = block_flops(vision["tokens"], vision["hidden_size"], vision["intermediate_size"])
    total = stem_flops(vision) + layer * b
    if heads:
        total += sum(head_flops(vision["hidden_size"], emb, classes) for e in exits if e <= layer and e < n)
    if layer == n:
        total += 2 * vision["hidden_size"] * emb
    return total


def full_depth_flops(vision: Mapping, emb: int) -> int:
    return flops_to_exit(vision, emb, vision["num_layers"], [], heads=False)


def mean_flops(vision: Mapping, emb: int, exit_layer: np.ndarray, exits: list[int], classes: int = 0) -> float:
    per = {int(layer): flops_to_exit(vision, emb, int(layer), exits, classes) for layer in np.unique(exit_layer)}
    return float(np.mean([per[int(layer)] for layer in exit_layer]))
