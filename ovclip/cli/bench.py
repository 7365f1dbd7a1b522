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
    "--scenario",
    type=click.Choice(["offline", "single-stream", "multi-stream"]),
    default="offline",
    show_default=True,
    help="MLPerf scenario: offline = throughput (batches, requests in flight); single-stream = 1 image per query, "
    "one at a time (latency mean/p90/p99); multi-stream = 8 images per query, one at a time (p99).",
)
@click.option(
    "--hint",
    type=click.Choice(["throughput", "latency"]),
    default=None,
    help="OpenVINO performance hint (default: throughput offline, latency in the stream scenarios).",
)
@click.option(
    "--batch",
    type=int,
    default=None,
    help="Images per inference, offline scenario. Default: per folder, the batch `ovclip deploy` recorded on this "
    "device, else the fastest of 8/16/32/64 for its deployed variant, measured first.",
)
@click.option("--nireq", type=int, default=None, help="Requests in flight, offline (default: the device's optimum).")
@click.option(
    "--time",
    "seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds of timed inference per record and round.",
)
@click.option(
    "--rounds",
    type=int,
    default=3,
    show_default=True,
    help="Rotating rounds: every record is timed once per round, in an order that rotates; medians and spread "
    "over the rounds, ratios within each round.",
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
    help="Images: 'builtin' (2,000 Fashion-MNIST test images), 'fashion-mnist:test', a folder with one subfolder "
    "per class, or unlabeled images: a flat folder, an image list (.txt, one path per line).",
)
@click.option(
    "--unlabeled",
    is_flag=True,
    help="Read --data as unlabeled images: every image of a folder tree (subfolders are not classes), or any set "
    "without its labels. Accuracy is then not measured; embedding fidelity to FP32 is.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    default=None,
    help="FP32 folder whose full-depth embeddings fidelity is measured against (default: an fp32 folder benched).",
)
@click.option(
    "--captions",
    type=click.Path(path_type=Path),
    default=None,
    help="JSONL of {image, caption} for text->image recall@k (full depth and early exit).",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "graph", "stages"]),
    default="auto",
    show_default=True,
    help="graph: each policy as one OpenVINO graph (dynamic-shape devices; one image per query runs it as If "
    "branches, so an image that exits skips the rest); stages: stage by stage from Python; auto: the device's default.",
)
@click.option("--pool", type=int, default=512, show_default=True, help="Images cycled through in the timed runs.")
@click.option(
    "--startup",
    is_flag=True,
    help="Also time compile and first inference of every record in fresh processes: model cache off, cold, warm.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="OpenVINO model cache folder for the timed models (default: ~/.cache/ovclip/ov_cache; $OVCLIP_CACHE_DIR "
    "moves it, OVCLIP_CACHE_DIR=off switches it off).",
)
@click.option("--no-cache", is_flag=True, help="Compile without OpenVINO's model cache.")
@click.option("--no-accuracy", is_flag=True, help="Measure speed only.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the records as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Write a PNG plot.")
@click.option("--strict", is_flag=True, help="Stop on the first unreadable image instead of skipping it.")
@friendly
def bench(folders, json_path, plot_path, data, unlabeled, captions, strict, no_accuracy, no_cache, cache_dir, **kw):
    """Speed, accuracy, exits, embedding fidelity and retrieval of deployment folders (default: out/fp32
    out/int8), every record timed in rotating rounds."""
    folders = list(folders) or [p for p in (Path("out/fp32"), Path("out/int8")) if p.exists()]
    if not folders:
        raise OvclipError("no deployment folders given and none in out/; run `ovclip export` / `ovclip quantize` first")
    if no_cache and cache_dir is not None:
        raise OvclipError("--no-cache and --cache-dir contradict each other; give one")
    if kw["pool"] < 1:
        raise OvclipError(f"--pool {kw['pool']}: must be at least 1")
    from ovclip.bench.runner import BenchSettings

    settings = BenchSettings(**kw, accuracy=not no_accuracy, cache_dir=None if no_cache else (cache_dir or "default"))
    from ovclip.bench.suite import bench_folders

    with progress_bars() as progress:
        records = bench_folders(
            folders, settings, data, captions, strict, progress, labels=False if unlabeled else "auto"
        )
    report(records, json_path, plot_path)


def report(records: list[dict], json_path: Path | None, plot_path: Path | None) -> None:
    """The table, the within-round comparisons, fidelity and retrieval, then the JSON records and the plot."""
    console.print(table(records))
    for line in comparison_lines(records) + fidelity_lines(records) + retrieval_lines(records):
        console.print(line, highlight=False, markup=False)
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


def _name(r: dict) -> str:
    return f"{Path(r['model']).name} {r['variant']}"


def comparison_lines(records: list[dict]) -> list[str]:
    """Early exit against full depth, ratios taken within each round (median, and the range over rounds)."""
    out = []
    for r in records:
        c = r.get("vs_full_depth")
        if not c:
            continue
        tp, lat = c["throughput_ratio"], c["latency_saving"]
        line = (
            f"{_name(r)} vs {c['variant']} (within rounds): throughput x{tp['median']:.3f} "
            f"[{tp['min']:.3f}-{tp['max']:.3f}], mean latency saving {100 * lat['median']:.1f}%"
        )
        if "flops_saving_timed" in c:
            key = (
                "latency_saving_over_flops_saving"
                if r["scenario"] != "offline"
                else "throughput_gain_over_flops_saving"
            )
            line += f" for a {100 * c['flops_saving_timed']:.1f}% FLOPs saving on the timed images ({c[key]:.2f}x)"
        out.append(line)
    return out


def fidelity_lines(records: list[dict]) -> list[str]:
    out = []
    for r in records:
        f = r.get("fidelity")
        if f:
            overlap = f.get("top10_overlap")
            out.append(
                f"{_name(r)}: embedding cosine to FP32 mean {f['mean_cosine']:.4f}, min {f['min_cosine']:.4f}; "
                f"top-10 neighbours shared {_fmt(overlap, True)}%"
                + (f" ({f['exit_rule']} exits)" if f["exit_rule"] else "")
            )
    notes = {r["fidelity_note"] for r in records if r.get("fidelity_note")}
    return out + [f"fidelity: {n}" for n in sorted(notes)]


def retrieval_lines(records: list[dict]) -> list[str]:
    out = []
    for r in records:
        ret = r.get("retrieval") or {}
        rule = (
            f" ({ret['exit_rule']} exits, FLOPs saving {_fmt(ret.get('flops_saving'), True)}%)"
            if ret.get("exit_rule")
            else ""
        )
        if "class_prompts" in ret:
            cp = ret["class_prompts"]
            out.append(
                f"{_name(r)}{rule}: class-prompt retrieval P@10 {_fmt(cp['P@10'], True)}, P@100 "
                f"{_fmt(cp['P@100'], True)}, mAP {_fmt(cp['mAP'], True)}; same-class P@10 "
                f"{_fmt(ret.get('same_class_P@10'), True)}"
            )
        if "captions" in ret:
            rc = ret["captions"]
            out.append(
                f"{_name(r)}{rule}: text->image " + " ".join(f"R@{k} {_fmt(rc[f'R@{k}'], True)}" for k in (1, 5, 10))
            )
        if "note" in ret:
            out.append(f"{_name(r)}: retrieval with early exit not measured: {ret['note']}")
    return out


def table(records: list[dict]) -> Table:
    stream = any(r["scenario"] != "offline" for r in records)
    t = Table(title=f"ovclip bench ({records[0]['scenario'] if records else 'offline'})", title_justify="left")
    cols = [("folder", "left"), ("variant", "left"), ("", "left"), ("precision", "left"), ("batch", "right")]
    cols += [("img/s", "right"), ("rounds min-max", "right")]
    cols += [("lat mean ms", "right"), ("p90", "right"), ("p99", "right")] if stream else [("lat med ms", "right")]
    cols += [("top-1 %", "right"), ("top-5 %", "right"), ("GFLOP/img", "right"), ("saving %", "right")]
    cols += [("compile s", "right"), ("exits", "left")]
    for col, j in cols:
        t.add_column(col, justify=j)
    for r in records:
        hist, s, lat = r.get("exit_histogram"), r["throughput_spread"], r["latency_ms"]
        row = [Path(r["model"]).name, r["variant"], "deployed" if r.get("deployed") else "", r["inference_precision"]]
        row += [str(r["batch"]), _fmt(r["throughput_fps"]), f"{s['min']:.1f}-{s['max']:.1f}"]
        row += [_fmt(lat[k], digits=2) for k in (("mean", "p90", "p99") if stream else ("median",))]
        row += [_fmt(r["top1"], True, 2), _fmt(r["top5"], True, 2), f"{r['flops_per_image'] / 1e9:.3f}"]
        row += [_fmt(r["flops_saving"], True), _fmt(r.get("compile_s"), digits=2)]
        row += [" ".join(f"{k}:{v}" for k, v in hist.items()) if hist else ""]
        t.add_row(*row)
    return t
