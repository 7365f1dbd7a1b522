"""`ovclip analyze`: runs `ovclip.analyze.analyze_folders` with progress bars, prints its tables, writes JSON/plot."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from ovclip.cli.common import console, friendly, log, progress_bars


@click.command("analyze")
@click.option("--fp32", "fp32", required=True, type=click.Path(path_type=Path), help="FP32 folder (`ovclip export`).")
@click.option(
    "--int8", "int8", required=True, type=click.Path(path_type=Path), help="INT8 folder of the same checkpoint."
)
@click.option(
    "--ee",
    type=click.Path(path_type=Path),
    default=None,
    help="INT8 folder with an exit policy: adds the rescue quadrants (early exit vs full depth).",
)
@click.option(
    "--data",
    default="builtin",
    show_default=True,
    help="Images: 'builtin' (Fashion-MNIST test), 'fashion-mnist:test', or an image folder.",
)
@click.option("--images", type=int, default=500, show_default=True, help="Images to measure on (seeded subset).")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per inference.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the result as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Write a PNG plot.")
@click.option("--strict", is_flag=True, help="Stop on the first unreadable image instead of skipping it.")
@friendly
def analyze(fp32, int8, ee, data, images, batch, json_path, plot_path, strict):
    """Per-block quantization noise of INT8 vs FP32 (paper §3: NSR, INR, MSE, cosines, max activation)."""
    from ovclip.analyze.run import analyze_folders
    from ovclip.cli.analyze_report import blocks_table, plot, rescue_table

    with progress_bars() as progress:
        result = analyze_folders(
            fp32, int8, data=data, images=images, ee=ee, batch=batch, strict=strict, progress=progress
        )
    result["command"] = shlex.join(["ovclip", *sys.argv[1:]]) if sys.argv else "ovclip analyze"
    if result["note"]:
        log(f"[yellow]{result['note']}[/]")
    console.print(blocks_table(result))
    if result["eq6"]:
        e = result["eq6"]
        log(
            f"Eq. 6 (kappa {e['kappa']}) over the INT8 folder's exit blocks {e['candidates']}: "
            f"keeps {e['kept']}, prunes {e['pruned'] or 'none'}"
        )
    rt = rescue_table(result)
    if rt is not None:
        console.print(rt)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        log(f"wrote {json_path}")
    if plot_path is not None:
        log(f"wrote {plot(result, plot_path)}")
