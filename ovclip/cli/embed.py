"""`ovclip embed` (a collection to Parquet shards and a LanceDB index) and `ovclip search` (text or image query)."""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ovclip.cli.common import console, friendly, progress_bars, show_note
from ovclip.embed import EmbedOptions, EmbedProgress, EmbedResult, embed_collection
from ovclip.progress import ProgressEvent

# openvino's import sends telemetry from a forked process; lancedb warns about forks once it is loaded
warnings.filterwarnings("ignore", message="lancedb fork support is experimental")


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} img/s" if task.speed else "— img/s", style="progress.data.speed")


@contextmanager
def _embed_bar():
    """A progress callback: one bar with images done, images/s and ETA; notes print above it."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True, speed_estimate_period=60) as bar:
        task = None

        def handle(event: ProgressEvent) -> None:
            nonlocal task
            if event.note is not None:
                show_note(bar.console.print, event)
            if isinstance(event, EmbedProgress):
                if task is None:  # resumed shards count as done from the start, not into the rate
                    task = bar.add_task("embedding", total=event.total, completed=event.done)
                bar.update(task, completed=event.done)

        yield handle


def _summary(r: EmbedResult) -> None:
    rate = f" ({r.new_images / r.seconds:,.0f} img/s)" if r.seconds > 0 and r.new_images else ""
    resumed = f", {r.resumed_shards} done before this run" if r.resumed_shards else ""
    console.print(
        f"embedded {r.rows:,} of {r.images:,} images into {r.out} ({r.shards} shard{'s' * (r.shards != 1)}{resumed}) "
        f"in {r.seconds:.1f} s{rate}",
        highlight=False,
    )
    if r.skipped:
        what = "image" if r.skipped == 1 else "images"
        console.print(f"[yellow]skipped {r.skipped:,} unreadable {what} (listed in {r.skipped_file})[/]")
    table = Table(title="exit block", title_justify="left")
    table.add_column("after block", justify="right")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for block, n in sorted(r.exit_histogram.items()):
        label = f"{block} (full depth)" if block == r.num_layers else str(block)
        table.add_row(label, f"{n:,}", f"{100 * n / max(r.rows, 1):.1f} %")
    console.print(table)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "--deployment",
    type=click.Path(path_type=Path),
    default=Path("out/int8"),
    show_default=True,
    help="Deployment folder (from `ovclip export` / `ovclip quantize`).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder of Parquet shards.")
@click.option(
    "--index", "index_path", type=click.Path(path_type=Path), default=None, help="Also write a LanceDB index."
)
@click.option("--ray", "ray", is_flag=True, help="Run on Ray Data (a local Ray instance unless --ray-address).")
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster (implies --ray).")
@click.option("--ray-actors", type=int, default=None, help="Actors, each holding one deployment (default: CPUs).")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per inference.")
@click.option("--shard-size", type=int, default=4096, show_default=True, help="Images per Parquet shard.")
@click.option("--workers", type=int, default=None, help="Batches in flight in one process (default: CPUs, max 8).")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option("--full-depth", is_flag=True, help="No early exit: every image runs the whole vision tower.")
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device.")
@click.option(
    "--ann-min-rows",
    type=int,
    default=100_000,
    show_default=True,
    help="Build an ANN index when the index has at least this many rows; below, search is exact.",
)
@click.option(
    "--ann-type",
    type=click.Choice(["ivf-flat", "ivf-pq"]),
    default="ivf-flat",
    show_default=True,
    help="ANN index: IVF lists of exact vectors, or of PQ codes (smaller, re-ranked exactly).",
)
@friendly
def embed(src, deployment, out, index_path, ray, ray_address, ray_actors, batch, shard_size, workers, strict,
          full_depth, device, ann_min_rows, ann_type) -> None:  # fmt: skip
    """Embed every image of SRC (a folder tree, an image list, or a captions .jsonl) into Parquet shards in OUT.

    Re-running the same command resumes: finished shards are kept, the one cut short is redone.
    """
    opts = EmbedOptions(batch=batch, shard_size=shard_size, strict=strict, early_exit=not full_depth, device=device,
                        workers=workers, ray=ray or ray_address is not None, ray_address=ray_address,
                        ray_actors=ray_actors)  # fmt: skip
    with _embed_bar() as progress:
        result = embed_collection(src, deployment, out, opts, progress=progress)
    _summary(result)
    if index_path is not None:
        from ovclip.index import AnnOptions, build_index

        with progress_bars() as progress:
            ann_opts = AnnOptions(min_rows=ann_min_rows, index_type=ann_type.upper().replace("-", "_"))
            info = build_index(out, index_path, ann_opts, progress=progress)
        ann = info["ann"]
        kind = f"{ann['type']} ANN index, {ann['num_partitions']} lists" if ann else "exact search"
        console.print(f"index {index_path}: {info['rows']:,} embeddings, {kind}", highlight=False)


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.option("--text", default=None, help="Search for images matching this text.")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="Search for images like this one.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of results.")
@click.option(
    "--deployment", type=click.Path(path_type=Path), default=None, help="Deployment folder (default: the index's)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@friendly
def search(index_path, text, image, k, deployment, as_json) -> None:
    """Search an index written by `ovclip embed --index` with a text or an image; print the top-k."""
    from ovclip.index import search as run_search

    result = run_search(index_path, text=text, image=image, k=k, deployment=deployment)
    if as_json:
        hits = [asdict(h) for h in result.hits]
        body = {"query": result.query, "kind": result.kind, "exact": result.exact, "hits": hits}
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    how = "exact" if result.exact else "ANN"
    table = Table(title=f"{result.kind} query {result.query!r} ({how} search)", title_justify="left")
    for name, justify in (("#", "right"), ("score", "right"), ("path", "left"), ("exit", "right"), ("size", "right")):
        table.add_column(name, justify=justify)
    has_captions = any(h.captions for h in result.hits)
    if has_captions:
        table.add_column("captions")
    for h in result.hits:
        row = [str(h.rank), f"{h.score:.4f}", escape(h.path), str(h.exit_block), f"{h.width}x{h.height}"]
        table.add_row(*row, *([escape(" | ".join(h.captions or []))] if has_captions else []))
    Console().print(table)  # results go to stdout; progress and errors to stderr
