"""What the `ovclip embed` / `ovclip search` tests share: a tree of real Fashion-MNIST PNGs, and the tiny FP32 folder
(conftest's `fp32_folder`) with two random exit heads and a label-free 'agreement' exit rule, so images really leave
the tower at different blocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pyarrow.parquet as pq
from PIL import Image

from ovclip.data.fashion_mnist import CLASS_NAMES, load_split
from ovclip.data.images import load_image

EXITS = [2, 3]


def write_fmnist_tree(root: Path, n: int, *, bad: bool = True) -> list[Path]:
    """The first `n` Fashion-MNIST test images as PNGs in class subfolders (nested one level deeper for odd classes),
    plus, with `bad`, a corrupt PNG, an empty file, a non-image file and a hidden image (neither of the last two
    is part of the collection). Returns the image paths the source must list, in sorted-walk order."""
    x, y = load_split("test")
    for i in range(n):
        folder = root / CLASS_NAMES[y[i]].replace("/", "-")
        if y[i] % 2:
            folder = folder / "more"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(folder / f"{i:05d}.png")
    if bad:
        (root / "bag" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        (root / "bag" / "empty.jpg").write_bytes(b"")
        (root / "bag" / "notes.txt").write_text("not an image")
        Image.fromarray(x[0]).save(root / "bag" / ".hidden.png")
    return sorted_walk(root)


def sorted_walk(root: Path) -> list[Path]:
    """Independent statement of the folder order: per folder, its image files by name, then its subfolders."""
    out = []
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    out += [p for p in files if p.suffix.lower() in (".png", ".jpg")]
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out += sorted_walk(d)
    return out


def _widest_gap(values: np.ndarray) -> float:
    v = np.sort(values)
    lo, hi = len(v) // 4, 3 * len(v) // 4
    k = int(np.argmax(np.diff(v[lo : hi + 1])))
    return float((v[lo + k] + v[lo + k + 1]) / 2)


def early_exit_folder(fp32_folder: Path, dest: Path, images: list[Path]) -> Path:
    """A copy of `fp32_folder` with random SSA heads after blocks 2 and 3 and an 'agreement' embedding policy whose
    threshold sits in the widest gap of the middle half of `images`' agreement values (so about half exit after
    block 3, and no image is near the threshold)."""
    import torch

    from ovclip.exits.heads import SSAHead, export_head
    from ovclip.folder import write_manifest
    from ovclip.policy.rules import ExitPolicy
    from ovclip.runtime import Deployment
    from ovclip.runtime.deployment import trace_vision

    shutil.copytree(fp32_folder, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    v = manifest["vision"]
    heads = {}
    torch.manual_seed(5)
    for layer in EXITS:
        heads[layer] = f"exit_head_{layer}.xml"
        head = SSAHead(v["hidden_size"], manifest["embedding_dim"]).eval()
        ov.save_model(export_head(head, v["tokens"], v["hidden_size"]), dest / heads[layer], compress_to_fp16=False)
    probe = ExitPolicy("agreement", EXITS, heads, {2: None, 3: 0.0})
    dep = Deployment(dest, verify=False)
    pixels = dep.preprocess([load_image(p) for p in images])
    trace = trace_vision(dep, pixels, probe)["heads"]
    agreement = np.sum(trace[3][0] * trace[2][0], axis=1)
    policy = ExitPolicy("agreement", EXITS, heads, {2: None, 3: _widest_gap(agreement)})
    manifest["exit_policy_embedding"] = policy.to_dict()
    write_manifest(dest, manifest)
    return dest


def read_rows(out: Path) -> dict[str, dict]:
    """path -> row of an `ovclip embed` output folder (asserting that no path appears twice)."""
    table = pq.read_table(out)
    rows = table.to_pylist()
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "a path appears in more than one row"
    return by_path
