"""`ovclip deploy`: the fastest configuration for the target device, measured, written as one deployment folder.

    checkpoint -> candidate folders (FP32 IR with exits; INT8 with exits) -> measured on the device -> the winner

With `precision="auto"` (the default) both candidates are built from one FP32 conversion of the checkpoint, each
with exits calibrated on its own tower's features; every configuration they offer (f32, the plugin's default
float precision where it differs — bf16 on CPUs with AMX/AVX512_BF16 —, INT8; each with and without exits) is
timed on calibration images in rotating rounds, and the fastest whose accuracy stays within the tolerance of FP32
is deployed (`ovclip.precision.decide`). The folder's manifest records every figure and the reason under
"deployed", and `Deployment(folder)` runs that choice (`ovclip.folder.deployed`). A given precision builds only
its folder and measures nothing. The exit calibration writes the float folder, the quantize pipeline the INT8 one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ovclip.errors import OvclipError
from ovclip.exits.config import ExitBuildConfig
from ovclip.export.float_tower import FloatTower
from ovclip.folder import Manifest, check_target, read_manifest, staging_folder, write_manifest
from ovclip.folder.deployed import DEPLOYED, has_exits
from ovclip.precision.choose import choose_measured
from ovclip.precision.settings import DeploySettings
from ovclip.progress import Progress, note
from ovclip.quantize.config import QuantizationConfig

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint


def deploy(
    ckpt: LoadedCheckpoint,
    out: str | Path,
    calibration,
    settings: DeploySettings = DeploySettings(),
    quantization: QuantizationConfig = QuantizationConfig(),
    early_exit: ExitBuildConfig | None = ExitBuildConfig(),
    *,
    exits: str | list[int] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Build the candidates `settings.precision` needs, choose (measuring on `settings.device` under "auto"), and
    write the chosen folder to `out` with its "deployed" record. `early_exit` None: no exits anywhere."""
    out = check_target(out, overwrite=settings.overwrite)
    keep = Path(settings.keep_candidates).absolute() if settings.keep_candidates is not None else None
    if keep is not None and keep.exists():
        raise OvclipError(f"{keep} already exists; choose another `keep_candidates`", params="keep_candidates")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.candidates-*"):  # left by a deploy that was killed
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.candidates-", dir=out.parent))
    try:
        folders = build_candidates(ckpt, work, calibration, settings, quantization, early_exit, exits, progress)
        if settings.precision == "auto":
            winner, record = choose_measured(folders, calibration, settings, early_exit, progress)
        else:
            winner, record = given_choice(folders, settings.precision)
        manifest = install(folders[winner], out, record, settings.overwrite)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(work), keep)
            note(progress, f"candidate folders kept in {keep}: {', '.join(sorted(folders))}")
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_candidates(
    ckpt, work: Path, calibration, settings: DeploySettings, quantization, early_exit, exits, progress
) -> dict[str, Path]:
    """The candidate folders `settings.precision` needs under `work`: "float" (FP32 IR) and/or "int8"."""
    from ovclip.exits.float_folder import export_with_exits
    from ovclip.export import ExportOptions, export_deployment
    from ovclip.quantize.pipeline import quantize_deployment

    one = "int8" if settings.precision == "int8" else "float"
    wanted = ["float", "int8"] if settings.precision == "auto" else [one]
    needs_tower = "int8" in wanted or early_exit is not None  # a plain float export converts on its own
    tower = FloatTower.convert(ckpt) if needs_tower else None
    folders = {}
    for name in wanted:
        folders[name] = work / name
        # each build changes the tower it is given: a copy each
        copy = FloatTower([m.clone() for m in tower.stages], tower.text.clone()) if tower is not None else None
        note(progress, f"candidate '{name}': building {folders[name].name}")
        if name == "int8":
            quantize_deployment(
                ckpt,
                folders[name],
                calibration,
                quantization,
                exits=exits,
                static_batch=settings.static_batch,
                early_exit=early_exit,
                progress=progress,
                tower=copy,
            )
        elif early_exit is not None:
            options = ExportOptions(exits=exits, static_batch=settings.static_batch)
            export_with_exits(ckpt, folders[name], calibration, options, early_exit, progress=progress, tower=copy)
        else:
            export_deployment(ckpt, folders[name], ExportOptions(exits=exits, static_batch=settings.static_batch))
    return folders


def given_choice(folders: dict[str, Path], precision: str) -> tuple[str, dict]:
    """The record of a precision that was given, not measured: INT8 runs its float layers in the plugin's
    default precision (null), a float folder in the precision given."""
    name = "int8" if precision == "int8" else "float"
    manifest = read_manifest(folders[name])
    return name, {
        "inference_precision": None if precision == "int8" else precision,
        "early_exit": has_exits(manifest),
        "chosen_by": f"precision={precision!r} (given; nothing measured)",
    }


def install(winner: Path, out: Path, record: dict, overwrite: bool) -> Manifest:
    """Copy the chosen candidate folder to `out` (atomically) with its "deployed" record in the manifest."""
    data = dict(read_manifest(winner).data)
    data.pop("files", None)
    data.pop("format", None)
    data.pop("format_version", None)
    data[DEPLOYED] = record
    with staging_folder(out, overwrite=overwrite) as tmp:
        for f in winner.iterdir():
            if f.name != "manifest.json":
                shutil.copy2(f, tmp / f.name)
        manifest = write_manifest(tmp, data)
    return Manifest(out, manifest.data)
