"""`analyze_folders`: FP32 vs INT8 deployment folders of one checkpoint, block by block, on real images."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

from ovclip.analyze.measure import (
    TOKENS,
    block_statistics,
    check_same_checkpoint,
    check_variants,
    eq6_pruning,
    rescue_table,
    select_images,
)
from ovclip.analyze.surgery import BlockTaps
from ovclip.errors import OvclipError
from ovclip.folder import read_manifest
from ovclip.folder.manifest import library_versions
from ovclip.preprocess import PreprocessConfig

RANDOM_NOTE = "random weights: the checkpoint is untrained, so these figures describe no real model"


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
    log: Callable[[str], None] | None = None,
    tick: Callable[[str, float], None] | None = None,
) -> dict:
    """The whole `ovclip analyze` result as one JSON-ready dict (see `measure.py` for the definitions)."""
    from ovclip.bench.report import templates_for
    from ovclip.data.datasets import open_dataset

    if batch < 1:
        raise OvclipError(f"--batch {batch}: must be at least 1")
    log = log or (lambda m: None)
    t0 = time.time()
    m32, m8 = read_manifest(fp32), read_manifest(int8)
    check_variants(m32, m8)
    check_same_checkpoint(m32, m8)
    mee = None
    if ee is not None:
        mee = read_manifest(ee)
        if mee.variant != "int8":
            raise OvclipError(f"--ee {mee.folder} is a {mee.variant} folder; pass an INT8 folder with exit heads")
        check_same_checkpoint(m32, mee, flag="--ee")
        if not mee.get("exit_policy"):
            raise OvclipError(
                f"--ee {mee.folder}: its manifest has no exit_policy; quantize with exits (drop --no-exits) first"
            )
    dataset = open_dataset(data, strict=strict)
    if dataset.skipped:
        log(f"[yellow]skipped {len(dataset.skipped)} unreadable images (first: {dataset.skipped[0][0]})[/]")
    idx = select_images(len(dataset), images)
    pcfg = PreprocessConfig.load(m32.path("preprocessor_config.json"))
    n_layers = int(m32.vision["num_layers"])
    log(f"analyzing {len(idx)} images from {dataset.source}: {n_layers} blocks, f32 on CPU")
    taps32, taps8 = BlockTaps(m32), BlockTaps(m8)
    done = [0]

    def step(k: int) -> None:
        done[0] += k
        if tick is not None:
            tick("blocks FP32 vs INT8", done[0] / len(idx))

    pixel_batches = (dataset.pixels(idx[s], pcfg) for s in _batches(len(idx), batch))
    embeddings, rows = block_statistics(taps32, taps8, pixel_batches, n_layers, m8, tick=step)
    trained = m32.trained
    result = {
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
            "count": len(idx),
            "selection": "all" if len(idx) == len(dataset) else f"{len(idx)} of {len(dataset)}, seeded (0) random",
        },
        "execution": {"device": "CPU", "inference_precision": "f32", "batch": batch},
        "vision": {k: m32.vision[k] for k in ("num_layers", "hidden_size", "tokens", "image_size", "patch_size")},
        "int8_stages": [st["blocks"] for st in m8.vision["stages"]],
        "int8_smooth_quant_alpha": (m8.get("quantization") or {}).get("smooth_quant_alpha"),
        "tokens": TOKENS,
        "definitions": {
            "nsr": "Eq. 1: mean over images of ||z_L^INT8 - z_L^FP32|| / ||z_L^FP32 - z_(L-1)^FP32||",
            "inr": "Eq. 5: ||E_x z_L^FP32||^2 / sum_d Var_x(z_L^INT8 - z_L^FP32); null where that variance is 0 "
            "(the CLS token entering block 1 is the same vector for every image)",
            "mse": "mean over images, tokens and channels of (z_L^INT8 - z_L^FP32)^2",
            "cos": "mean over images of cos(z_L^FP32, z_L^INT8)",
            "max_abs": "max over images, tokens and channels of |z_L|",
        },
        "embeddings": embeddings,
        "blocks": rows,
        "eq6": eq6_pruning(rows, list(m8.vision.get("exits") or [])),
        "rescue": None,
    }
    if mee is not None:
        from ovclip.runtime import Deployment

        dep = Deployment(mee.folder, "CPU")
        templates = templates_for(data)
        class_emb = dep.class_embeddings(dataset.prompt_names, templates)
        ecfg = dep.preprocess_config
        labels = dataset.labels[idx]
        log(f"rescue quadrants: {mee.folder} with and without early exit on the same {len(idx)} images")
        pairs = ((dataset.pixels(idx[s], ecfg), labels[s]) for s in _batches(len(idx), batch))
        result["rescue"] = rescue_table(dep, pairs, class_emb)
        result["rescue"]["templates"] = templates
    result["seconds"] = round(time.time() - t0, 2)
    result["machine"] = platform.processor() or platform.machine()
    result["versions"] = library_versions()
    return result
