"""Measuring the candidate configurations on the target device: every variant of every candidate folder (f32,
the plugin's default float precision where it differs, INT8; each with and without exits) prepared and timed
as `ovclip bench` does it — accuracy (or, without labels, embedding fidelity to FP32) over the images, then all
of them timed together in rotating rounds — and read back as `Measured` for the decision."""

from __future__ import annotations

from pathlib import Path

from ovclip.bench.compare import add_fidelity
from ovclip.bench.runner import BenchSettings, prepare_folder
from ovclip.bench.timing import time_and_report
from ovclip.precision.decide import Measured
from ovclip.progress import Progress


def measure_candidates(
    folders: dict[str, Path],
    data,
    templates: list[str] | None,
    settings: BenchSettings,
    progress: Progress | None = None,
) -> tuple[list[Measured], list[dict]]:
    """`folders`: candidate name ("float", "int8") -> deployment folder. Returns what the decision reads and the
    bench records it was read from."""
    prepared, pools = [], {}
    labelled = getattr(data, "labels", None) is not None
    for folder in folders.values():
        prepared += prepare_folder(folder, settings, data, templates if labelled else None, progress, pools)
    add_fidelity(prepared, settings, data, progress)
    records = time_and_report(prepared, settings, progress)
    which = {str(Path(f)): name for name, f in folders.items()}
    return [as_measured(r, which[r["model"]]) for r in records], records


def as_measured(record: dict, folder: str) -> Measured:
    """One bench record as the decision reads it; the reference is the float folder in f32 at full depth."""
    fidelity = record.get("fidelity") or {}
    return Measured(
        name=record["variant"],
        folder=folder,
        precision=record["inference_precision"],
        early_exit=bool(record["early_exit"]),
        throughput=tuple(r["throughput_fps"] for r in record["rounds"]),
        top1=record.get("top1"),
        cosine=fidelity.get("mean_cosine"),
        reference=folder == "float" and record["inference_precision"] == "f32" and not record["early_exit"],
    )
