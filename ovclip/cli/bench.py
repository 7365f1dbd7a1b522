"""`ovclip bench`: runs `ovclip.bench.suite.bench_folders` with progress bars; a table, JSON records, a plot."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from ovclip.cli.common import console, friendly, progress_bars
from ovclip.errors import OvclipError


@click.command()
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device: CPU, GPU, NPU, AUTO:GPU,CPU, ...")
@click.option(
    "--hint",
    type=click.Choice(["throughput", "latency"]),
    default="throughput",
    show_default=True,
    help="OpenVINO performance hint.",
)
@click.option("--batch", type=int, default=8, show_default=True, help="Images per inference.")
@click.option("--nireq", type=int, default=None, help="Requests in flight (default: the device's optimal number).")
@click.option(
    "--time", "seconds", type=float, default=10.0, show_default=True, help="Seconds of timed inference per record."
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "f32", "bf16"]),
    default="auto",
    show_default=True,
    help="CPU inference precision: auto = fp32 folders in f32 plus a bf16 record where the CPU has bf16.",
)
@click.option(
    "--data",
    default="builtin",
    show_default=True,
    help="Evaluation images: 'builtin' (2,000 Fashion-MNIST test images), 'fashion-mnist:test', or a folder.",
)
@click.option(
    "--captions",
    type=click.Path(path_type=Path),
    default=None,
    help="JSONL of {image, caption} for text->image recall@k.",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "graph", "stages"]),
    default="auto",
    show_default=True,
    help="graph: each policy as one OpenVINO graph (dynamic-shape devices); stages: stage by stage from Python.",
)
@click.option("--no-accuracy", is_flag=True, help="Measure speed only.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the records as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Write a PNG plot.")
@click.option("--strict", is_flag=True, help="Stop on the first unreadable image instead of skipping it.")
@friendly
def bench(
    folders,
    device,
    hint,
    batch,
    nireq,
    seconds,
    precision,
    data,
    captions,
    runtime,
    no_accuracy,
    json_path,
    plot_path,
    strict,
):
    """Throughput, latency and zero-shot accuracy of deployment folders (default: out/fp32 out/int8)."""
    folders = list(folders) or [p for p in (Path("out/fp32"), Path("out/int8")) if p.exists()]
    if not folders:
        raise OvclipError("no deployment folders given and none in out/; run `ovclip export` / `ovclip quantize` first")
    from ovclip.bench.runner import BenchSettings

    settings = BenchSettings(
        device=device,
        hint=hint,
        batch=batch,
        nireq=nireq,
        seconds=seconds,
        precision=precision,
        runtime=runtime,
        accuracy=not no_accuracy,
    )
    from ovclip.bench.suite import bench_folders

    with progress_bars() as progress:
        records = bench_folders(folders, settings, data, captions, strict, progress)
    report(records, json_path, plot_path)


def report(records: list[dict], json_path: Path | None, plot_path: Path | None) -> None:
    """The table, text->image recall where measured, then the JSON records and the plot if asked for."""
    console.print(table(records))
    for model in dict.fromkeys(r["model"] for r in records if "recall" in r):
        recall = next(r["recall"] for r in records if r["model"] == model and "recall" in r)
        console.print(f"{model}: text->image " + " ".join(f"{k} {100 * v:.1f}" for k, v in recall.items()))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records, indent=2))
        console.print(f"wrote {json_path}")
    if plot_path is not None:
        from ovclip.cli.bench_plot import plot_records

        plot_records(records, plot_path)
        console.print(f"wrote {plot_path}")


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
