"""`bench_folders`: the records `ovclip bench` reports for several deployment folders on one data set."""

from __future__ import annotations

import platform
from pathlib import Path

from ovclip.bench.report import templates_for
from ovclip.bench.runner import BenchSettings, bench_folder
from ovclip.progress import Progress, note
from ovclip.runtime.device import check_device


def bench_folders(
    folders: list[str | Path],
    settings: BenchSettings,
    data: str | None = "builtin",
    captions: str | Path | None = None,
    strict: bool = False,
    progress: Progress | None = None,
) -> list[dict]:
    """One record per (folder, variant): speed, and zero-shot accuracy on `data` (None: speed only); with
    `captions` (JSONL of {image, caption}) each record also gets text->image `recall`."""
    from ovclip.data.datasets import open_dataset

    check_device(settings.device)
    dataset = open_dataset(data, strict=strict, progress=progress) if data else None
    if dataset is not None and dataset.skipped:
        first = dataset.skipped[0]
        note(
            progress, f"skipped {len(dataset.skipped)} unreadable images (first: {first[0]}: {first[1]})", warning=True
        )
    templates = templates_for(data)
    records: list[dict] = []
    for folder in folders:
        recs = bench_folder(folder, settings, dataset, templates, progress=progress)
        untrained = next((r for r in recs if not r["trained"]), None)
        if untrained is not None:
            note(progress, f"{folder}: {untrained['accuracy_note']}", warning=True)
        records.extend(recs)
    for r in records:
        r["data"] = dataset.source if dataset is not None else None
        r["machine"] = platform.processor() or platform.machine()
    if captions is not None:
        _add_recall(records, folders, settings, captions, strict, progress)
    return records


def _add_recall(records: list[dict], folders, settings: BenchSettings, captions, strict: bool, progress) -> None:
    from ovclip.bench.retrieval import retrieval_records

    for r in retrieval_records(folders, settings, captions, strict, progress):
        for rec in records:
            if rec["model"] == r["model"]:
                rec["recall"] = r["recall"]
