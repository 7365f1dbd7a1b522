"""`analyze_folders`: FP32 vs INT8 deployment folders of one checkpoint, block by block, on real images."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from ovclip.analyze.measure import (
    TOKENS,
    block_statistics,
    check_same_checkpoint,
    check_variants,
    eq6_pruning,
    measure_rescue,
    select_images,
)
from ovclip.analyze.surgery import BlockTaps
from ovclip.errors import OvclipError
from ovclip.folder import Manifest, read_manifest
from ovclip.folder.manifest import library_versions
from ovclip.preprocess import PreprocessConfig
from ovclip.progress import Progress, advance, note

RANDOM_NOTE = "random weights: the checkpoint is untrained, so these figures describe no real model"
DEFINITIONS = {
    "nsr": "Eq. 1: mean over images of ||z_L^INT8 - z_L^FP32|| / ||z_L^FP32 - z_(L-1)^FP32||",
    "inr": "Eq. 5: ||E_x z_L^FP32||^2 / sum_d Var_x(z_L^INT8 - z_L^FP32); null where that variance is 0 "
    "(the CLS token entering block 1 is the same vector for every image)",
    "mse": "mean over images, tokens and channels of (z_L^INT8 - z_L^FP32)^2",
    "cos": "mean over images of cos(z_L^FP32, z_L^INT8)",
    "max_abs": "max over images, tokens and channels of |z_L|",
}


def _batches(n: int, batch: int):
    for i in range(0, n, batch):
        yield slice(i, min(i + batch, n))


def analyze_folders(
    fp32: str | Path,
    int8: str | Path,
    *,
    data: str = "builtin",
    images: int = 500,
    ee: str | Path | None = None,
    batch: int = 32,
    strict: bool = False,
    progress: Progress | None = None,
) -> dict:
    """The whole `ovclip analyze` result as one JSON-ready dict (see `measure.py` for the definitions)."""
    if batch < 1:
        raise OvclipError(f"batch={batch}: must be at least 1", params="batch")
    t0 = time.time()
    m32, m8 = _read_pair(fp32, int8)
    mee = _read_early_exit_folder(ee, m32) if ee is not None else None
    dataset = _open_images(data, strict, progress)
    idx = select_images(len(dataset), images)
    embeddings, rows = _measure_blocks(m32, m8, dataset, idx, batch, progress)
    result = _result(m32, m8, data, dataset, idx, batch, embeddings, rows)
    if mee is not None:
        result["rescue"] = _rescue(mee, data, dataset, idx, batch, progress)
    result["seconds"] = round(time.time() - t0, 2)
    result["machine"] = platform.processor() or platform.machine()
    result["versions"] = library_versions()
    return result


def _read_pair(fp32: str | Path, int8: str | Path) -> tuple[Manifest, Manifest]:
    """The FP32 and INT8 manifests, refused unless they are those variants of one checkpoint."""
    m32, m8 = read_manifest(fp32), read_manifest(int8)
    check_variants(m32, m8)
    check_same_checkpoint(m32, m8)
    return m32, m8


def _read_early_exit_folder(ee: str | Path, m32: Manifest) -> Manifest:
    """The `ee` folder's manifest: INT8, of the FP32 folder's checkpoint, with an exit policy."""
    mee = read_manifest(ee)
    if mee.variant != "int8":
        raise OvclipError(
            f"ee={mee.folder} is a {mee.variant} folder; pass an INT8 folder with exit heads", params="ee"
        )
    check_same_checkpoint(m32, mee, name="ee")
    if not mee.get("exit_policy"):
        raise OvclipError(
            f"ee={mee.folder}: its manifest has no exit_policy; pass a folder quantized with exit heads "
            "(`ovclip quantize` writes them by default)",
            params="ee",
        )
    return mee


def _open_images(data: str, strict: bool, progress: Progress | None):
    from ovclip.data.datasets import open_dataset

    dataset = open_dataset(data, strict=strict, progress=progress)
    if dataset.skipped:
        note(
            progress,
            f"skipped {len(dataset.skipped)} unreadable images (first: {dataset.skipped[0][0]})",
            warning=True,
        )
    return dataset


def _measure_blocks(m32: Manifest, m8: Manifest, dataset, idx: np.ndarray, batch: int, progress: Progress | None):
    """Per-block statistics of both folders' tapped activations on the images `idx` (see `block_statistics`)."""
    pcfg = PreprocessConfig.load(m32.path("preprocessor_config.json"))
    n_layers = int(m32.vision["num_layers"])
    note(progress, f"analyzing {len(idx)} images from {dataset.source}: {n_layers} blocks, f32 on CPU")
    done = [0]

    def step(k: int) -> None:
        done[0] += k
        advance(progress, "blocks FP32 vs INT8", done[0] / len(idx))

    pixel_batches = (dataset.pixels(idx[s], pcfg) for s in _batches(len(idx), batch))
    return block_statistics(BlockTaps(m32), BlockTaps(m8), pixel_batches, n_layers, m8, tick=step)


def _result(m32: Manifest, m8: Manifest, data: str, dataset, idx, batch: int, embeddings, rows) -> dict:
    """The JSON-ready record of the block measurements (rescue, time and versions are added after)."""
    trained = m32.trained
    n, total = len(idx), len(dataset)
    return {
        "tool": "ovclip analyze",
        "fp32": str(m32.folder),
        "int8": str(m8.folder),
        "fp32_variant": m32.variant,
        "source": m32["source"],
        "trained": trained,
        "note": None if trained else RANDOM_NOTE,
        "images": {
            "data": data,
            "source": dataset.source,
            "count": n,
            "selection": "all" if n == total else f"{n} of {total}, seeded (0) random",
        },
        "execution": {"device": "CPU", "inference_precision": "f32", "batch": batch},
        "vision": {k: m32.vision[k] for k in ("num_layers", "hidden_size", "tokens", "image_size", "patch_size")},
        "int8_stages": [st["blocks"] for st in m8.vision["stages"]],
        "int8_smooth_quant_alpha": (m8.get("quantization") or {}).get("smooth_quant_alpha"),
        "tokens": TOKENS,
        "definitions": DEFINITIONS,
        "embeddings": embeddings,
        "blocks": rows,
        "eq6": eq6_pruning(rows, list(m8.vision.get("exits") or [])),
        "rescue": None,
    }


def _rescue(mee: Manifest, data: str, dataset, idx: np.ndarray, batch: int, progress: Progress | None) -> dict:
    """Rescue quadrants (paper §7) of the early-exit folder on the same images, with the data set's templates."""
    from ovclip.bench.report import templates_for
    from ovclip.runtime import Deployment

    dep = Deployment(mee.folder, "CPU")
    templates = templates_for(data)
    class_emb = dep.class_embeddings(dataset.prompt_names, templates)
    ecfg = dep.preprocess_config
    labels = dataset.labels[idx]
    note(progress, f"rescue quadrants: {mee.folder} with and without early exit on the same {len(idx)} images")
    pairs = ((dataset.pixels(idx[s], ecfg), labels[s]) for s in _batches(len(idx), batch))
    rescue = measure_rescue(dep, pairs, class_emb)
    rescue["templates"] = templates
    return rescue
