"""`ovclip bench` output: progress bars, a rich table, JSON records and a plot."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ovclip.bench.runner import BenchSettings, bench_folder
from ovclip.runtime.device import check_device

GENERIC_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a close-up photo of a {}."]


def templates_for(dataset_spec: str | None) -> list[str]:
    from ovclip.data.prompts import builtin_templates

    spec = (dataset_spec or "builtin").lower()
    if spec.startswith("builtin") or spec.startswith("fashion-mnist"):
        return builtin_templates("eval")
    return GENERIC_TEMPLATES


def _fmt(v, pct: bool = False, digits: int = 1) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.{digits}f}" if pct else f"{v:.{digits}f}"


def table(records: list[dict]) -> Table:
    t = Table(title="ovclip bench", title_justify="left")
    for col, j in [
        ("folder", "left"),
        ("variant", "left"),
        ("device", "left"),
        ("precision", "left"),
        ("batch", "right"),
        ("img/s", "right"),
        ("lat med ms", "right"),
        ("p90", "right"),
        ("top-1 %", "right"),
        ("top-5 %", "right"),
        ("GFLOP/img", "right"),
        ("saving %", "right"),
        ("exits", "left"),
    ]:
        t.add_column(col, justify=j)
    for r in records:
        hist = r.get("exit_histogram")
        t.add_row(
            Path(r["model"]).name,
            r["variant"],
            r["device"],
            r["inference_precision"],
            str(r["batch"]),
            _fmt(r["throughput_fps"]),
            _fmt(r["latency_ms"]["median"], digits=2),
            _fmt(r["latency_ms"]["p90"], digits=2),
            _fmt(r["top1"], True, 2),
            _fmt(r["top5"], True, 2),
            f"{r['flops_per_image'] / 1e9:.3f}",
            _fmt(r["flops_saving"], True),
            " ".join(f"{k}:{v}" for k, v in hist.items()) if hist else "",
        )
    return t


def bench_command(
    folders, settings: BenchSettings, data_spec, captions, json_path, plot_path, strict, console: Console
) -> list[dict]:
    from ovclip.data.datasets import open_dataset

    check_device(settings.device)
    dataset = open_dataset(data_spec, strict=strict) if data_spec else None
    if dataset is not None and dataset.skipped:
        console.print(
            f"[yellow]skipped {len(dataset.skipped)} unreadable images "
            f"(first: {dataset.skipped[0][0]}: {dataset.skipped[0][1]})[/]"
        )
    templates = templates_for(data_spec)
    records: list[dict] = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        tasks: dict[str, int] = {}

        def tick(name: str, frac: float) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=1.0)
            bar.update(tasks[name], completed=frac)

        for folder in folders:
            recs = bench_folder(folder, settings, dataset, templates, log=lambda m: bar.console.print(m), tick=tick)
            for r in recs:
                if not r["trained"]:
                    bar.console.print(f"[yellow]{folder}: {r['accuracy_note']}[/]")
                    break
            records.extend(recs)
    for r in records:
        r["data"] = dataset.source if dataset is not None else None
        r["machine"] = platform.processor() or platform.machine()
    console.print(table(records))
    if captions is not None:
        from ovclip.bench.retrieval import retrieval_records

        for r in retrieval_records(folders, settings, captions, strict):
            console.print(
                f"{r['model']}: text->image " + " ".join(f"{k} {100 * v:.1f}" for k, v in r["recall"].items())
            )
            for rec in records:
                if rec["model"] == r["model"]:
                    rec["recall"] = r["recall"]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records, indent=2))
        console.print(f"wrote {json_path}")
    if plot_path is not None:
        from ovclip.bench.plot import plot_records

        plot_records(records, plot_path)
        console.print(f"wrote {plot_path}")
    return records
