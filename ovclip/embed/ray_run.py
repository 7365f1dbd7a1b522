"""The embedding job on Ray Data: pending shards are rows of a dataset, `map_batches` hands them to an actor pool.

Each actor loads the deployment folder once (from its own node's disk: the folder must be at the same path on
every node) and makes whole shards with the same function as the single-process run (`shard_bytes`), so the
files are the same; it returns each shard's Parquet bytes, and this process (the driver) writes them into OUT
atomically. Images are opened by the actors: on a cluster they must be at the same path on every node (shared
storage, or object storage mounted there). OUT only needs to be on the driver's machine.

The driver holds the item lists of the pending shards (paths and captions, not pixels) while the dataset runs.
A local instance (`ray_address` None) is started with `address="local"` and shut down afterwards; an existing
cluster is left running.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ovclip.embed.shard import ShardSpec, shard_bytes
from ovclip.embed.sources import Item
from ovclip.embed.store import manifest_digest, shard_path, write_atomic
from ovclip.errors import OvclipError, first_line
from ovclip.extras import require


class ShardActor:
    """One Deployment per actor; `__call__` makes the shards of a batch of dataset rows."""

    def __init__(self, folder: str, device: str, hint: str, spec: ShardSpec, threads: int) -> None:
        from pathlib import Path

        from ovclip.runtime import Deployment
        from ovclip.runtime.device import core

        if device.upper().startswith("CPU"):  # share the node's cores between the actors on it
            core().set_property("CPU", {"INFERENCE_NUM_THREADS": max(1, threads)})
        self.spec = spec
        self.error = ""
        try:
            if manifest_digest(Path(folder)) != spec.digest:
                raise OvclipError(f"{folder} on node {os.uname().nodename} is another deployment than the driver's")
            self.dep = Deployment(folder, device, hint=hint)
        except (OvclipError, OSError) as e:
            self.error = f"{e} (on node {os.uname().nodename})"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards, data, errors = [], [], []
        for index, items_json in zip(batch["shard"], batch["items"], strict=True):
            items = [Item(p, tuple(c) if c is not None else None) for p, c in json.loads(items_json)]
            blob, error = b"", self.error
            if not error:
                try:
                    blob, _ = shard_bytes(self.dep, int(index), items, self.spec)
                except OvclipError as e:
                    error = str(e)
            shards.append(int(index))
            data.append(blob)
            errors.append(error)
        return {
            "shard": np.asarray(shards, np.int64),
            "data": np.asarray(data, object),
            "error": np.asarray(errors, object),
        }


def _connect(ray, job) -> bool:
    """Connect to the cluster (or start a local instance); True if this call started it."""
    o = job.options
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
    if o.ray_address:
        try:
            ray.init(address=o.ray_address, **kwargs)
        except Exception as e:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError from ray.init
            raise OvclipError(
                f"ray_address={o.ray_address}: cannot connect to a Ray cluster ({first_line(e)}); check the address "
                "(`ray status` on the head node shows it)",
                params="ray_address",
            ) from None
        return True
    ray.init(address="local", object_store_memory=o.ray_object_store_memory, **kwargs)
    return True


@contextmanager
def _quiet(ray) -> Iterator[None]:
    """No progress bars or log lines from Ray Data while the job runs (the library reports through `progress`)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.execution_options.verbose_progress = False
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _cause(e: BaseException) -> OvclipError | None:
    """The OvclipError inside a Ray error chain, if there is one."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OvclipError):
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def require_ray():
    """The `ray` module with Ray Data, or one line naming the extra."""
    ray = require("ray", extra="ray", feature="running on Ray")
    require("ray.data", extra="ray", feature="running on Ray")
    return ray


def run_ray(job) -> tuple[int, int]:
    """Embed the job's pending shards on Ray; returns (shards, images) that were already done."""
    ray = require_ray()
    pending, done, resumed = [], 0, 0
    for index, items in job.shards():
        if job.done(index, items):
            done, resumed = done + len(items), resumed + 1
        else:
            listing = json.dumps([[it.path, it.captions] for it in items], ensure_ascii=False)
            pending.append((index, len(items), listing))
    resumed_images = done
    job.report(done)
    if not pending:
        return resumed, resumed_images
    started = _connect(ray, job)
    try:
        with _quiet(ray):
            done = _execute(ray, job, pending, done)
    except OvclipError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed Ray run is one line, with the OvclipError inside if any
        inner = _cause(e)
        if inner is not None:
            raise inner from None
        raise OvclipError(f"the Ray run failed: {first_line(e)}") from e
    finally:
        if started:
            ray.shutdown()
    return resumed, resumed_images


def _execute(ray, job, pending: list[tuple[int, int, str]], done: int) -> int:
    o = job.options
    cpus = ray.cluster_resources().get("CPU", 1)
    actors = o.ray_actors or max(1, int(cpus // o.ray_cpus_per_actor))
    actors = min(actors, len(pending))
    rows = [{"shard": index, "items": items} for index, _, items in pending]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardActor,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=o.ray_cpus_per_actor,
        fn_constructor_kwargs={
            "folder": str(job.folder),
            "device": o.device,
            "hint": o.hint,
            "spec": job.spec,
            "threads": max(1, int(o.ray_cpus_per_actor)),
        },
    )
    sizes = {index: n for index, n, _ in pending}
    for row in ds.iter_rows():
        if row["error"]:
            raise OvclipError(row["error"])
        write_atomic(shard_path(job.out, int(row["shard"])), bytes(row["data"]))
        done += sizes[int(row["shard"])]
        job.report(done)
    return done
