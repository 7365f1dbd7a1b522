"""A tiny early-exit deployment folder and real Fashion-MNIST PNGs, for the server and OVMS-export tests.

The folder: conftest's tiny CLIP (random weights) exported with stages cut after blocks 1, 2 and 3, random
exit heads at each, a confidence policy for label sets and an agreement policy without labels, with thresholds
set on the shipped Fashion-MNIST images so that images leave at several blocks (speed/equivalence only: the
exits mean nothing on random weights).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from conftest import EMBED, IMAGE, WIDTH
from PIL import Image

EXITS = [1, 2, 3]


def fashion_pngs(n: int, start: int = 0) -> list[bytes]:
    """`n` real Fashion-MNIST test images (the shipped evaluation subset) encoded as PNG files."""
    from ovclip.data.builtin import EVAL_FILE, load_npz

    images, _, _ = load_npz(EVAL_FILE)
    out = []
    for a in images[start : start + n]:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _heads(folder: Path) -> dict[int, str]:
    import openvino as ov
    import torch

    from ovclip.exits.heads import SSAHead, export_head

    tokens = (IMAGE // 32) ** 2 + 1
    files = {}
    for layer in EXITS:
        torch.manual_seed(100 + layer)
        head = SSAHead(WIDTH, EMBED).eval()
        files[layer] = f"exit_head_{layer}.xml"
        ov.save_model(export_head(head, tokens, WIDTH), folder / files[layer], compress_to_fp16=False)
    return files


def _thresholds(dep, pixels, policy, cls) -> dict[int, float | None]:
    """Per exit, the 60% quantile of its scores on `pixels`: about 40% of what reaches an exit leaves there."""
    from ovclip.runtime.deployment import trace_vision

    trace = trace_vision(dep, pixels, policy)["heads"]
    out, prev = {}, None
    for layer in EXITS:
        emb, sav = trace[layer]
        scores = dep.logit_scale * emb @ cls.T
        s = policy.score(layer, scores, sav, prev, emb)
        out[layer] = float(np.quantile(s, 0.6)) if np.isfinite(s).all() else None
        prev = emb
    return out


_BUILT: dict[str, Path] = {}


def early_exit_folder(fp32_folder: Path, tmp_path_factory) -> Path:
    """The folder, built once per test session from conftest's `fp32_folder` (the tiny CLIP with stages cut after
    blocks 1, 2 and 3); the server and the OVMS tests share it and only read it."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = build_early_exit_folder(fp32_folder, tmp_path_factory.mktemp("early-exit") / "ee")
    return _BUILT[key]


def build_early_exit_folder(fp32_folder: Path, folder: Path) -> Path:
    from ovclip.data.label_sets import builtin_label_set
    from ovclip.folder import write_manifest
    from ovclip.policy.rules import ExitPolicy
    from ovclip.runtime import Deployment

    shutil.copytree(fp32_folder, folder)
    data = json.loads((folder / "manifest.json").read_text())
    assert data["vision"]["exits"] == EXITS, data["vision"]["exits"]
    heads = _heads(folder)
    none = {layer: None for layer in EXITS}
    labels_policy = ExitPolicy("confidence", EXITS, heads, none)
    embed_policy = ExitPolicy("agreement", EXITS, heads, none)
    data.pop("files")
    data["exit_policy"], data["exit_policy_embedding"] = labels_policy.to_dict(), embed_policy.to_dict()
    write_manifest(folder, data)

    dep = Deployment(folder)
    pixels = dep.preprocess([Image.open(io.BytesIO(b)).convert("RGB") for b in fashion_pngs(64, start=500)])
    ls = builtin_label_set()
    cls = dep.class_embeddings(list(ls.prompt_names), list(ls.templates))
    data["exit_policy"] = labels_policy.with_thresholds(_thresholds(dep, pixels, labels_policy, cls)).to_dict()
    data["exit_policy_embedding"] = embed_policy.with_thresholds(_thresholds(dep, pixels, embed_policy, cls)).to_dict()
    write_manifest(folder, data)
    return folder
