"""`ovclip quantize`: checkpoint -> FP32 IR (in memory) -> NNCF INT8 stages -> deployment folder."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov

from ovclip.errors import OvclipError
from ovclip.export.exporter import (
    base_manifest,
    convert_text,
    convert_vision_stage,
    vision_stage_files,
    write_common,
)
from ovclip.export.stages import parse_exits, stage_bounds
from ovclip.folder import Manifest, staging_folder, write_manifest
from ovclip.quantize.config import QuantizationConfig
from ovclip.quantize.nncf_stages import count_int8, f32_compile, quantize_model, quantize_stages, run_batched
from ovclip.quantize.stitch import stitch

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint
    from ovclip.data.datasets import LabeledImages


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
            x = run_batched(f32_compile(s), x)
            outs.append(x)
        return outs


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embedding_cosine(stages: list[ov.Model], pixels: np.ndarray, reference: np.ndarray) -> float:
    x = pixels
    for s in stages:
        x = run_batched(f32_compile(s), x)
    return float(np.mean(np.sum(_l2n(x) * _l2n(reference), axis=1)))


def choose_alpha(
    tower: FloatTower, calib: np.ndarray, held: np.ndarray, cfg: QuantizationConfig, log
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
        log(f"SmoothQuant alpha {alpha if alpha is not None else 'off'}: mean cosine to FP32 {cos:.5f}")
        if best is None or cos > best[0]:
            best = (cos, alpha, stages)
    assert best is not None
    return best[1], best[2], trials


def quantize_deployment(
    ckpt: LoadedCheckpoint,
    out: str | Path,
    calibration: LabeledImages,
    cfg: QuantizationConfig = QuantizationConfig(),
    *,
    exits: str | list[int] | None = None,
    static_batch: int | None = None,
    overwrite: bool = False,
    early_exit=None,
    log=print,
) -> Manifest:
    """Write an INT8 deployment folder; `early_exit` (an ExitBuildConfig) adds heads, gates and a policy."""
    t0 = time.time()
    n_layers = ckpt.model.config.vision_config.num_hidden_layers
    exit_list = parse_exits(exits, n_layers)
    need = cfg.subset_size + (cfg.auto_holdout if cfg.smooth_quant_alpha == "auto" else 0)
    if len(calibration) < 1:
        raise OvclipError("the calibration set is empty")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(calibration))
    calib_idx = np.sort(order[: min(cfg.subset_size, len(order))])
    held_idx = np.sort(order[len(calib_idx) : need])
    if cfg.smooth_quant_alpha == "auto" and len(held_idx) < 50:
        raise OvclipError(
            f"--smooth-quant auto needs at least {cfg.subset_size + 50} calibration images (have {len(calibration)}); "
            "give a number or 'off', or a larger --calibration set"
        )
    pcfg = ckpt.preprocess
    log(f"calibration: {len(calib_idx)} images for NNCF statistics from {calibration.source}")
    calib_px = calibration.pixels(calib_idx, pcfg)
    held_px = calibration.pixels(held_idx, pcfg) if len(held_idx) else calib_px[:0]
    tower = FloatTower.convert(ckpt, static_batch)
    alpha, q_blocks, trials = choose_alpha(tower, calib_px, held_px, cfg, log)
    log(f"SmoothQuant alpha used: {alpha if alpha is not None else 'off'}")
    text_model = tower.text
    if cfg.text == "int8":
        prompts = _text_calibration(ckpt, calibration)
        text_model = quantize_model(tower.text, [prompts[i : i + 1] for i in range(len(prompts))], cfg, None)
    with staging_folder(out, overwrite=overwrite) as tmp:
        policies: dict = {}
        if early_exit is not None:
            from ovclip.exits.build import build_exits

            exit_list, policies = build_exits(
                tmp, ckpt, tower, q_blocks, calibration, early_exit, exits=exits, skip=calib_idx, log=log
            )
        q_stages = [
            stitch(q_blocks[a:b], f"vision_stage{k}") for k, (a, b) in enumerate(stage_bounds(n_layers, exit_list))
        ]
        for f, st in zip(vision_stage_files(len(q_stages)), q_stages, strict=True):
            ov.save_model(st, tmp / f)
        ov.save_model(text_model, tmp / "text.xml", compress_to_fp16=cfg.text != "fp32")
        write_common(tmp, ckpt)
        data = base_manifest(ckpt, exit_list, static_batch)
        data["variant"] = "int8"
        data["vision"]["precision"] = "int8"
        data["text"]["precision"] = cfg.text
        data["quantization"] = {
            "tool": "nncf",
            "config": cfg.as_dict(),
            "smooth_quant_alpha": alpha,
            "auto_trials": trials,
            "calibration": {"source": calibration.source, "images": len(calib_idx), "held_out": len(held_idx)},
            "int8_nodes": [count_int8(s) for s in q_stages],
        }
        data.update(policies)
        data["quantization"]["seconds"] = round(time.time() - t0, 1)
        manifest = write_manifest(tmp, data)
    return Manifest(Path(out).absolute(), manifest.data)


def _text_calibration(ckpt: LoadedCheckpoint, calibration: LabeledImages) -> np.ndarray:
    from ovclip.data.prompts import builtin_templates

    prompts = [t.format(c) for c in calibration.prompt_names for t in builtin_templates("train")]
    return ckpt.tokenizer(prompts)
