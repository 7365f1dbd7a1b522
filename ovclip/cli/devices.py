"""`ovclip devices`: the table (or JSON) of what OpenVINO sees here, from `ovclip.devices.describe_devices`."""

from __future__ import annotations

import json

import click
from rich.table import Table

from ovclip.cli.common import console, friendly
from ovclip.devices import UNTESTED_NOTE, describe_devices


def table(records: list[dict]) -> Table:
    t = Table(title="OpenVINO devices", title_justify="left", caption=UNTESTED_NOTE, caption_justify="left")
    for col in (
        "device",
        "name",
        "type",
        "precisions",
        "default precision",
        "dynamic shapes",
        "THROUGHPUT requests",
        "streams range",
    ):
        t.add_column(col, justify="right" if col in ("THROUGHPUT requests",) else "left")
    for r in records:
        rng = r["range_for_streams"]
        req = r["throughput_optimal_infer_requests"]
        t.add_row(
            r["device"],
            r["full_name"] or "—",
            r["device_type"] or "—",
            " ".join(r["precisions"]) or "—",
            r["default_inference_precision"] or "—",
            f"{r['dynamic_shapes']} (from {r['dynamic_shapes_source']})",
            "—" if req is None else f"{req} ({r['throughput_streams']} streams)",
            f"{rng[0]}–{rng[1]}" if rng else "—",
        )
    return t


@click.command("devices")
@click.option("--device", default=None, help="Only this device (CPU, GPU, GPU.1, NPU, AUTO:GPU,CPU ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON on stdout instead of a table.")
@friendly
def devices(device, as_json):
    """What OpenVINO sees here: name, precisions, dynamic shapes, default precision, THROUGHPUT requests."""
    records = describe_devices(device)
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    console.print(table(records))
    for r in records:
        if r["errors"]:
            console.print(
                f"[yellow]{r['device']}: not answered: "
                + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())
                + "[/]",
                highlight=False,
            )
    for basis in dict.fromkeys(r["dynamic_shapes_basis"] for r in records):
        console.print(f"dynamic shapes from: {basis}", highlight=False)
