"""Early exit on a float deployment folder: exit heads, gates and policy for FP32/FP16 IR, not only INT8.

A float folder runs in whatever precision the device executes float in (bf16 on CPUs with AMX or AVX512_BF16,
f16 on GPUs and NPUs, f32 elsewhere), so early exit stacks on whichever precision is fastest there. The exits
are calibrated exactly as for INT8 (`ovclip.exits.build`), on the float tower's own features: the float blocks
stand in for the quantized ones. INR pruning is off (kappa 0): it measures quantization noise, and a float tower
has none (its INR would be signal / 0).

This module writes float folders with exits; the quantize pipeline stays the only writer of INT8 folders.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import openvino as ov

from ovclip.errors import OvclipError
from ovclip.exits.build import ExitBuild, build_exits
from ovclip.exits.config import ExitBuildConfig
from ovclip.export.exporter import PRECISIONS, ExportOptions, base_manifest, vision_stage_files, write_common
from ovclip.export.float_tower import FloatTower
from ovclip.export.stages import stage_bounds
from ovclip.export.static import with_static_batch
from ovclip.folder import Manifest, check_target, staging_folder, write_manifest
from ovclip.progress import Progress, note
from ovclip.quantize.pipeline import write_exits
from ovclip.quantize.stitch import stitch

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint
    from ovclip.data.datasets import LabeledImages

# what INR pruning and the NSR measure (quantization noise) does not exist in a float tower
NO_QUANTIZATION_NOISE = {"inr": {}, "nsr": {}, "pruned": [], "kappa": None}


def export_with_exits(
    ckpt: LoadedCheckpoint,
    out: str | Path,
    calibration: LabeledImages,
    options: ExportOptions = ExportOptions(),
    early_exit: ExitBuildConfig = ExitBuildConfig(),
    *,
    progress: Progress | None = None,
    tower: FloatTower | None = None,
) -> Manifest:
    """Write an FP32/FP16 deployment folder whose vision tower is split at exits calibrated on `calibration`
    (`options.exits`: as `build_exits` takes them — None/"default" candidates, or a fixed list; placement
    "auto" in `early_exit` chooses among every block). Static batch: every IR, heads included, takes it.
    `tower`: the checkpoint's FP32 tower when already converted (dynamic batch; its models are used up)."""
    if options.precision not in PRECISIONS:
        raise OvclipError(f"precision={options.precision!r}: choose one of {', '.join(PRECISIONS)}", params="precision")
    check_target(out, overwrite=options.overwrite)
    # a dynamic batch: calibration runs many images at once; the batch is fixed as each IR is saved
    tower = tower if tower is not None else FloatTower.convert(ckpt)
    note(progress, f"early exit on the {options.precision} tower: calibrating on its own features")
    built = build_exits(
        ckpt, tower, tower.stages, calibration, replace(early_exit, kappa=0.0), exits=options.exits, progress=progress
    )
    built.policy.info.update(NO_QUANTIZATION_NOISE, tower=options.precision)
    return write_float_folder(ckpt, out, tower, built, options)


def write_float_folder(
    ckpt: LoadedCheckpoint, out: str | Path, tower: FloatTower, built: ExitBuild, options: ExportOptions
) -> Manifest:
    """The folder: the tower's blocks joined into stages at `built.exits`, the text tower, the exit heads and
    the policies, every IR with `options.static_batch` fixed when given."""
    batch, fp16 = options.static_batch, options.precision == "fp16"
    n = ckpt.model.config.vision_config.num_hidden_layers
    bounds = stage_bounds(n, built.exits)
    stages = [stitch(tower.stages[a:b], f"vision_stage{k}") for k, (a, b) in enumerate(bounds)]
    data = base_manifest(ckpt, built.exits, batch)
    data["variant"] = options.precision
    data["vision"]["precision"] = data["text"]["precision"] = options.precision
    with staging_folder(out, overwrite=options.overwrite) as tmp:
        for f, st in zip(vision_stage_files(len(stages)), stages, strict=True):
            ov.save_model(with_static_batch(st, batch), tmp / f, compress_to_fp16=fp16)
        ov.save_model(with_static_batch(tower.text, batch), tmp / "text.xml", compress_to_fp16=fp16)
        data |= write_exits(tmp, built, batch)
        write_common(tmp, ckpt)
        manifest = write_manifest(tmp, data)
    return Manifest(Path(out).absolute(), manifest.data)
