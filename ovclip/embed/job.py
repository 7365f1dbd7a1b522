"""`embed_collection`: a source of images to a folder of Parquet shards, in one process or on Ray.

    result = embed_collection("photos/", "out/int8", "emb/", EmbedOptions(batch=32), progress=callback)
    result.rows, result.skipped, result.exit_histogram

The source is cut into shards of `shard_size` images in its fixed order; each shard is embedded and written
atomically (`ovclip.embed.store`), so running the same call again after a crash or a kill skips the finished
shards, redoes the one that was cut short, and ends with every image of the source exactly once.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ovclip.embed.shard import ShardSpec, items_digest, pyarrow_parquet, shard_bytes
from ovclip.embed.sources import Item, Source, open_source
from ovclip.embed.store import (
    SKIPPED_FILE,
    check_no_extra_shards,
    finalize,
    manifest_digest,
    open_out,
    shard_done,
    shard_path,
    write_atomic,
)
from ovclip.errors import OvclipError
from ovclip.folder import read_manifest
from ovclip.progress import Progress, ProgressEvent, note


@dataclass(frozen=True)
class EmbedProgress(ProgressEvent):
    """A progress event that also counts images: `done` of `total` (resumed shards count as done)."""

    done: int = 0
    total: int = 0


@dataclass
class EmbedOptions:
    batch: int = 32  # images per inference call
    shard_size: int = 4096  # images per Parquet shard (the unit of resuming and of Ray work)
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    early_exit: bool = True  # the folder's label-free exit rule (False: every image at full depth)
    device: str = "CPU"
    hint: str = "throughput"
    workers: int | None = None  # batches in flight in one process (default: the CPU count, at most 8)
    ray: bool = False  # run on Ray Data: a new local instance, or the cluster at ray_address
    ray_address: str | None = None
    ray_actors: int | None = None  # default: the cluster's CPUs // ray_cpus_per_actor
    ray_cpus_per_actor: float = 1.0
    ray_object_store_memory: int | None = None  # bytes, for a local instance (default: Ray's)


@dataclass
class EmbedResult:
    out: Path
    images: int  # items in the source
    rows: int  # images embedded (images - skipped)
    skipped: int
    shards: int
    resumed_shards: int  # shards already done when this run started
    exit_histogram: dict[int, int]  # exit block -> images; the tower's depth = full depth
    num_layers: int
    seconds: float
    new_images: int = 0  # images this run embedded (or skipped), i.e. not resumed
    skipped_file: Path = field(default=Path())


@dataclass
class Job:
    """What the runners share: where, what, how."""

    source: Source
    out: Path
    folder: Path
    spec: ShardSpec
    options: EmbedOptions
    total: int
    progress: Progress | None

    def shards(self) -> Iterator[tuple[int, list[Item]]]:
        """(index, items) of every shard, streamed from the source."""
        buf: list[Item] = []
        index = 0
        for item in self.source.items():
            buf.append(item)
            if len(buf) == self.options.shard_size:
                yield index, buf
                index, buf = index + 1, []
        if buf:
            yield index, buf

    def done(self, index: int, items: list[Item]) -> bool:
        return shard_done(self.out, index, items_digest(items))

    def report(self, done: int) -> None:
        if self.progress is not None:
            frac = done / self.total if self.total else 1.0
            self.progress(EmbedProgress(task="embedding", fraction=min(1.0, frac), done=done, total=self.total))


def _check_options(o: EmbedOptions) -> None:
    for name in ("batch", "shard_size"):
        value = getattr(o, name)
        if not isinstance(value, int) or value < 1:
            raise OvclipError(f"{name}={value}: must be a whole number of at least 1", params=name)
    if o.workers is not None and o.workers < 1:
        raise OvclipError(f"workers={o.workers}: must be at least 1", params="workers")
    if o.ray_actors is not None and o.ray_actors < 1:
        raise OvclipError(f"ray_actors={o.ray_actors}: must be at least 1", params="ray_actors")
    for name in ("ray_address", "ray_actors"):
        if getattr(o, name) is not None and not o.ray:
            raise OvclipError(f"give `{name}` together with `ray`", params=(name, "ray"))


def embed_collection(
    src: str | Path,
    deployment: str | Path,
    out: str | Path,
    options: EmbedOptions | None = None,
    progress: Progress | None = None,
) -> EmbedResult:
    """Embed every image of `src` with the deployment folder `deployment` into Parquet shards under `out`."""
    opts = options or EmbedOptions()
    _check_options(opts)
    pyarrow_parquet()  # a missing extra stops the run before it starts
    if opts.ray:
        from ovclip.embed.ray_run import require_ray

        require_ray()
    source = open_source(src)
    folder = Path(deployment).absolute()
    manifest = read_manifest(folder, verify=True)
    digest = manifest_digest(folder)
    spec = ShardSpec(digest, int(manifest["embedding_dim"]), source.kind == "captions", opts.batch,
                     opts.early_exit, opts.strict)  # fmt: skip
    note(progress, f"listing {source.path}")
    total = source.count()
    if total == 0:
        raise OvclipError(f"{source.path}: no image files in this folder or below it; check the path")
    out = Path(out).absolute()
    identity = {"source": source.describe(), "deployment": str(folder), "deployment_digest": digest}
    open_out(out, {**identity, "shard_size": opts.shard_size, "early_exit": opts.early_exit})
    job = Job(source, out, folder, spec, opts, total, progress)
    t0 = time.perf_counter()
    if opts.ray:
        from ovclip.embed.ray_run import run_ray

        resumed, resumed_images = run_ray(job)
    else:
        resumed, resumed_images = _run_local(job)
    n_shards = math.ceil(total / opts.shard_size)
    check_no_extra_shards(out, n_shards)
    summary = finalize(out, n_shards, total)
    return EmbedResult(
        out=out,
        images=total,
        rows=summary["rows"],
        skipped=summary["skipped"],
        shards=n_shards,
        resumed_shards=resumed,
        exit_histogram={int(k): v for k, v in summary["exit_histogram"].items()},
        num_layers=int(manifest.vision["num_layers"]),
        seconds=time.perf_counter() - t0,
        new_images=total - resumed_images,
        skipped_file=out / SKIPPED_FILE,
    )


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class _Count:
    """Counts the images of a shard as its batches finish, from `start` (the images done before it)."""

    def __init__(self, job: Job, start: int) -> None:
        self.job, self.n = job, start

    def __call__(self, n: int) -> None:
        self.n += n
        self.job.report(self.n)


def _run_local(job: Job) -> tuple[int, int]:
    """Embed the pending shards in this process; returns (shards, images) that were already done."""
    from ovclip.runtime import Deployment

    done_before = {index: len(items) for index, items in job.shards() if job.done(index, items)}
    done = sum(done_before.values())
    job.report(done)  # the first event: what earlier runs did (not part of this run's rate)
    dep = None
    for index, items in job.shards():
        if index in done_before:
            continue
        if dep is None:
            dep = Deployment(job.folder, job.options.device, hint=job.options.hint)
        workers = job.options.workers or default_workers()
        data, _ = shard_bytes(dep, index, items, job.spec, workers, _Count(job, done))
        write_atomic(shard_path(job.out, index), data)
        done += len(items)
    return len(done_before), sum(done_before.values())
