"""`bench_folders`: the records `ovclip bench` reports for several deployment folders on one data set.

Every variant of every folder is prepared first (compiled, measured over the data set); then all of them are
timed together in rotating rounds (`ovclip.bench.rounds`), so the host's slow spells hit every record alike,
and ratios between records are taken within each round.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

from ovclip.bench.compare import add_fidelity
from ovclip.bench.report import templates_for
from ovclip.bench.retrieval import add_retrieval
from ovclip.bench.runner import BenchSettings, Prepared, prepare_folder
from ovclip.bench.timing import time_and_report
from ovclip.progress import Progress, note
from ovclip.runtime.device import check_device


def bench_folders(
    folders: list[str | Path],
    settings: BenchSettings,
    data: str | None = "builtin",
    captions: str | Path | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    labels: Literal["auto"] | bool = "auto",
) -> list[dict]:
    """One record per (folder, variant): speed in `settings.scenario`, and on `data` (None: speed only)
    zero-shot accuracy where it has labels, exits, FLOPs, embedding fidelity to FP32 and retrieval; with
    `captions` (JSONL of {image, caption}) text->image recall too. `labels`: see `ovclip.data.unlabeled.open_images`."""
    from ovclip.data.unlabeled import open_images

    check_device(settings.device)
    dataset = open_images(data, labels=labels, strict=strict, progress=progress) if data else None
    if dataset is not None and dataset.skipped:
        first = dataset.skipped[0]
        note(
            progress, f"skipped {len(dataset.skipped)} unreadable images (first: {first[0]}: {first[1]})", warning=True
        )
    labelled = dataset is not None and dataset.labels is not None
    if dataset is not None and not labelled:
        note(progress, f"{dataset.source}: no labels, so no zero-shot accuracy; embedding fidelity instead")
    templates = templates_for(data) if labelled else None
    prepared: list[Prepared] = []
    pools: dict = {}
    for folder in folders:
        mine = prepare_folder(folder, settings, dataset, templates, progress, pools)
        if mine and not mine[0].record["trained"]:
            note(progress, f"{folder}: {mine[0].record['accuracy_note']}", warning=True)
        prepared.extend(mine)
    add_retrieval(prepared, dataset, captions, strict, progress)
    add_fidelity(prepared, settings, dataset, progress)
    if settings.startup:
        from ovclip.bench.startup import add_startup

        add_startup(prepared, settings, progress)
    records = time_and_report(prepared, settings, progress)
    for r in records:
        r["data"] = dataset.source if dataset is not None else None
        r["machine"] = platform.processor() or platform.machine()
    return records
