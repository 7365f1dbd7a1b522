"""`ovclip quantize`: checkpoint -> FP32 IR (in memory) -> NNCF INT8 stages (+ early exit) -> deployment folder.

This module is the only writer of an INT8 deployment folder: the exit calibration (`ovclip.exits.build`)
returns heads and policies, and they are saved here with the stages, the text tower and the manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov

from ovclip.data.calibration_sets import CalibrationImages, calibration_texts
from ovclip.errors import OvclipError
from ovclip.exits.build import ExitBuild, ExitBuildConfig, build_exits
from ovclip.exits.config import check_calibration_size
from ovclip.export.exporter import base_manifest, vision_stage_files, write_common
from ovclip.export.float_tower import FloatTower
from ovclip.export.stages import parse_exits, stage_bounds
from ovclip.export.static import with_static_batch
from ovclip.folder import Manifest, check_target, staging_folder, write_manifest
from ovclip.ir import compile_f32, run_batched
from ovclip.progress import Progress, note
from ovclip.quantize.config import QuantizationConfig
from ovclip.quantize.nncf_stages import count_int8, quantize_model, quantize_stages
from ovclip.quantize.stitch import stitch
from ovclip.vectors import l2_normalize

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint

MIN_ALPHA_HOLDOUT = 50  # held-out images below which `smooth_quant_alpha="auto"` cannot choose


def embedding_cosine(stages: list[ov.Model], pixels: np.ndarray, reference: np.ndarray) -> float:
    x = pixels
    for s in stages:
        x = run_batched(compile_f32(s), x)
    return float(np.mean(np.sum(l2_normalize(x) * l2_normalize(reference), axis=1)))


def choose_alpha(
    tower: FloatTower, calib: np.ndarray, held: np.ndarray, cfg: QuantizationConfig, progress: Progress | None = None
) -> tuple[float | None, list[ov.Model], list[dict]]:
    """SmoothQuant alpha: the configured one, or under 'auto' the one whose INT8 embeddings are closest
    (mean cosine) to FP32 on held-out calibration images; returns it, its stages and the trials."""
    if cfg.smooth_quant_alpha != "auto":
        alpha = cfg.smooth_quant_alpha
        return alpha, quantize_stages(tower.stages, calib, cfg, alpha), []
    reference = tower.activations(held)[-1]
    best: tuple[float, float | None, list[ov.Model]] | None = None
    trials = []
    for alpha in cfg.auto_alphas:
        stages = quantize_stages(tower.stages, calib, cfg, alpha)
        cos = embedding_cosine(stages, held, reference)
        trials.append({"alpha": alpha, "mean_cosine_to_fp32": cos})
        note(progress, f"SmoothQuant alpha {alpha if alpha is not None else 'off'}: mean cosine to FP32 {cos:.5f}")
        if best is None or cos > best[0]:
            best = (cos, alpha, stages)
    assert best is not None
    return best[1], best[2], trials


def calibration_subsets(n: int, cfg: QuantizationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rows NNCF collects statistics on, and the held-out rows 'auto' picks the alpha on (seeded, disjoint)."""
    if n < 1:
        raise OvclipError("the calibration set is empty")
    need = cfg.subset_size + (cfg.auto_holdout if cfg.smooth_quant_alpha == "auto" else 0)
    order = np.random.default_rng(cfg.seed).permutation(n)
    calib_idx = np.sort(order[: min(cfg.subset_size, len(order))])
    held_idx = np.sort(order[len(calib_idx) : need])
    if cfg.smooth_quant_alpha == "auto" and len(held_idx) < MIN_ALPHA_HOLDOUT:
        raise OvclipError(
            f"smooth_quant_alpha='auto' needs at least {cfg.subset_size + MIN_ALPHA_HOLDOUT} calibration images "
            f"(have {n}); give a number or None, or a larger `calibration` set",
            params=("smooth_quant_alpha", "calibration"),
        )
    return calib_idx, held_idx


def quantize_deployment(
    ckpt: LoadedCheckpoint,
    out: str | Path,
    calibration: CalibrationImages,
    cfg: QuantizationConfig = QuantizationConfig(),
    *,
    exits: str | list[int] | None = None,
    static_batch: int | None = None,
    overwrite: bool = False,
    early_exit: ExitBuildConfig | None = None,
    progress: Progress | None = None,
    tower: FloatTower | None = None,
) -> Manifest:
    """Write an INT8 deployment folder; `early_exit` adds exit heads, gates and a calibrated exit policy. `tower`:
    the checkpoint's FP32 tower when already converted (dynamic batch; its models may be changed)."""
    t0 = time.time()
    n_layers = ckpt.model.config.vision_config.num_hidden_layers
    exit_list = parse_exits(exits, n_layers)
    check_target(out, overwrite=overwrite)
    if early_exit is not None:  # before NNCF's minutes, not after
        check_calibration_size(calibration, early_exit)
    texts = calibration_texts(calibration) if cfg.text == "int8" else None
    calib_idx, held_idx = calibration_subsets(len(calibration), cfg)
    note(progress, f"calibration: {len(calib_idx)} images for NNCF statistics from {calibration.source}")
    calib_px = calibration.pixels(calib_idx, ckpt.preprocess)
    held_px = calibration.pixels(held_idx, ckpt.preprocess) if len(held_idx) else calib_px[:0]
    # a dynamic batch for calibration; `static_batch` is fixed as each IR is saved
    tower = tower if tower is not None else FloatTower.convert(ckpt)
    alpha, q_blocks, trials = choose_alpha(tower, calib_px, held_px, cfg, progress)
    note(progress, f"SmoothQuant alpha used: {alpha if alpha is not None else 'off'}")
    text_model = tower.text
    if cfg.text == "int8":
        prompts = ckpt.tokenizer(texts)
        text_model = quantize_model(tower.text, [prompts[i : i + 1] for i in range(len(prompts))], cfg, None)
    built = None
    if early_exit is not None:
        built = build_exits(ckpt, tower, q_blocks, calibration, early_exit, exits=exits, progress=progress)
        exit_list = built.exits
    data = base_manifest(ckpt, exit_list, static_batch)
    data["variant"] = "int8"
    data["vision"]["precision"] = "int8"
    data["text"]["precision"] = cfg.text
    data["quantization"] = {
        "tool": "nncf",
        "config": cfg.as_dict(),
        "smooth_quant_alpha": alpha,
        "auto_trials": trials,
        "calibration": {
            "source": calibration.source,
            "labelled": calibration.labels is not None,
            "images": len(calib_idx),
            "held_out": len(held_idx),
        },
    }
    with staging_folder(out, overwrite=overwrite) as tmp:
        # The exit heads first, each converted to IR just before it is saved: OpenVINO names the nodes it
        # generates from process-wide counters, so this order (the one before the exit calibration returned its
        # heads instead of writing them) keeps the head IRs byte for byte what earlier builds wrote.
        exit_entries = write_exits(tmp, built, static_batch) if built is not None else {}
        bounds = stage_bounds(n_layers, exit_list)
        q_stages = [stitch(q_blocks[a:b], f"vision_stage{k}") for k, (a, b) in enumerate(bounds)]
        data["quantization"]["int8_nodes"] = [count_int8(s) for s in q_stages]
        for f, st in zip(vision_stage_files(len(q_stages)), q_stages, strict=True):
            ov.save_model(with_static_batch(st, static_batch), tmp / f)
        text_model = with_static_batch(text_model, static_batch)
        ov.save_model(text_model, tmp / "text.xml", compress_to_fp16=cfg.text != "fp32")
        data |= exit_entries
        write_common(tmp, ckpt)
        data["quantization"]["seconds"] = round(time.time() - t0, 1)
        manifest = write_manifest(tmp, data)
    return Manifest(Path(out).absolute(), manifest.data)


def write_exits(folder: Path, built: ExitBuild, static_batch: int | None = None) -> dict:
    """Save the exit heads as `exit_head_<block>.xml` (fp16 weights, `static_batch` fixed when given); the manifest
    entries naming them."""
    files = {}
    for layer, head in built.heads.items():
        files[layer] = f"exit_head_{layer}.xml"
        ov.save_model(with_static_batch(head, static_batch), folder / files[layer], compress_to_fp16=True)
    return {
        "exit_policy": built.policy.with_heads(files).to_dict(),
        "exit_policy_embedding": built.embedding_policy.with_heads(files).to_dict(),
    }
