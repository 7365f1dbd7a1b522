"""An embedded LanceDB vector index of an `ovclip embed` output folder.

    INDEX/images.lance/       the LanceDB table: the Parquet shards' columns (path, embedding, exit_block, width,
                              height, manifest_digest[, captions]), with an ANN index on `embedding` when the
                              table has at least `min_rows` rows (IVF-Flat by default, dot product)
    INDEX/ovclip-index.json   what it was built from: the deployment folder and its manifest digest, the shards'
                              item digests, the ANN settings, the row count

The index is built in a sibling folder and renamed into place, so INDEX is always either the previous complete
index or the new one (a kill between the two renames leaves no INDEX; the next build makes it). Building again
from the same shards with the same settings does nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from ovclip.embed.shard import pyarrow, pyarrow_parquet
from ovclip.embed.store import SUMMARY_FILE, read_job, shard_files, shard_meta
from ovclip.errors import OvclipError
from ovclip.extras import require
from ovclip.progress import Progress, advance, note

TABLE = "images"
INFO_FILE = "ovclip-index.json"
VECTOR = "embedding"
METRIC = "dot"  # embeddings are L2-normalised: LanceDB's dot distance is 1 - cosine similarity


def lancedb():
    return require("lancedb", extra="index", feature="the vector index")


ANN_TYPES = ("IVF_FLAT", "IVF_PQ")


@dataclass(frozen=True)
class AnnOptions:
    """The ANN index. IVF-Flat (the default) keeps the exact vectors in its lists: its recall depends only on how many
    lists a query probes. IVF-PQ compresses them (num_sub_vectors codes per vector) and re-ranks `k *
    refine_factor` candidates exactly; on tightly clustered embeddings (Fashion-MNIST's: the 10th and the 11th
    neighbour often differ by 1e-4 in cosine) it needs a large refine factor to find the same neighbours."""

    min_rows: int = 100_000  # below this, search is exact (brute force); at or above it, an ANN index is built
    index_type: str = "IVF_FLAT"  # or IVF_PQ
    num_partitions: int | None = None  # IVF lists (default: about sqrt(rows), at most rows / 256)
    num_sub_vectors: int | None = None  # IVF_PQ: codes per vector (default: embedding_dim / 8)
    nprobes: int = 20  # IVF lists searched per query
    refine_factor: int = 10  # IVF_PQ: re-rank k * refine_factor candidates with the exact vectors


def _check(opts: AnnOptions) -> None:
    if opts.min_rows < 0:
        raise OvclipError(f"ann_min_rows={opts.min_rows}: must be 0 or more", params="ann_min_rows")
    if opts.index_type not in ANN_TYPES:
        raise OvclipError(f"ann_type={opts.index_type!r}: choose one of {', '.join(ANN_TYPES)}", params="ann_type")
    for name in ("nprobes", "refine_factor"):
        if getattr(opts, name) < 1:
            raise OvclipError(f"{name}={getattr(opts, name)}: must be at least 1", params=name)


def read_info(index: Path) -> dict | None:
    try:
        info = json.loads((Path(index) / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("table") == TABLE else None


def _stamp(out: Path, files: list[Path], job: dict, opts: AnnOptions) -> str:
    h = hashlib.sha256(json.dumps([job["deployment_digest"], job["early_exit"], asdict(opts)]).encode())
    for f in files:
        meta = shard_meta(f)
        if meta is None:
            raise OvclipError(f"{f}: unreadable shard; run the same `ovclip embed` command again")
        h.update(f"{f.name} {meta['items_digest']}\n".encode())
    return h.hexdigest()


def _batches(files: list[Path], progress: Progress | None):
    pq = pyarrow_parquet()
    for i, f in enumerate(files):
        table = pq.read_table(f)
        yield from table.replace_schema_metadata(None).to_batches()
        advance(progress, "writing the index", (i + 1) / len(files))


def _clean_siblings(index: Path) -> None:
    for stale in index.parent.glob(f".{index.name}.ovclip-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(staging: Path, index: Path) -> None:
    if not index.exists():
        os.replace(staging, index)
        return
    old = index.parent / f".{index.name}.ovclip-old-{uuid.uuid4().hex[:8]}"
    os.replace(index, old)
    os.replace(staging, index)
    shutil.rmtree(old, ignore_errors=True)


def build_index(
    out: str | Path, index: str | Path, ann: AnnOptions | None = None, progress: Progress | None = None
) -> dict:
    """Write the embeddings of the finished `ovclip embed` folder `out` into a LanceDB index at `index`."""
    opts = ann or AnnOptions()
    _check(opts)
    out, index = Path(out).absolute(), Path(index).absolute()
    job = read_job(out)
    if not (out / SUMMARY_FILE).exists():
        raise OvclipError(f"{out}: the embedding run is not finished; run the same `ovclip embed` command again")
    files = shard_files(out)
    stamp = _stamp(out, files, job, opts)
    existing = read_info(index) if index.exists() else None
    if index.exists() and existing is None:
        raise OvclipError(f"{index} exists and is not an ovclip index; choose another index path or remove it")
    if existing is not None and existing.get("stamp") == stamp:
        note(progress, f"{index} is up to date")
        return existing
    _clean_siblings(index)
    index.parent.mkdir(parents=True, exist_ok=True)
    staging = index.parent / f".{index.name}.ovclip-tmp-{uuid.uuid4().hex[:8]}"
    try:
        info = _write(staging, files, job, opts, progress)
        info["stamp"] = stamp
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _swap_in(staging, index)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def _pq(ann: dict | None) -> bool:
    return ann is not None and ann["type"] == "IVF_PQ"


def _create_ann(table, opts: AnnOptions, rows: int, dim: int) -> dict:
    parts = opts.num_partitions or max(1, min(round(math.sqrt(rows)), rows // 256))  # k-means: 256 rows per list
    kwargs = {"metric": METRIC, "vector_column_name": VECTOR, "index_type": opts.index_type, "num_partitions": parts}
    ann = {"type": opts.index_type, "num_partitions": parts}
    if opts.index_type == "IVF_PQ":
        kwargs["num_sub_vectors"] = ann["num_sub_vectors"] = opts.num_sub_vectors or max(1, dim // 8)
    with warnings.catch_warnings():  # lancedb 0.40 prefers config objects; these keyword arguments still work
        warnings.simplefilter("ignore", DeprecationWarning)
        table.create_index(**kwargs)
    return ann


def _write(staging: Path, files: list[Path], job: dict, opts: AnnOptions, progress: Progress | None) -> dict:
    schema = pyarrow_parquet().read_schema(files[0]).remove_metadata()
    db = lancedb().connect(staging)
    table = db.create_table(TABLE, data=pyarrow().RecordBatchReader.from_batches(schema, _batches(files, progress)))
    rows = table.count_rows()
    dim = schema.field(VECTOR).type.list_size
    ann = None
    if rows >= opts.min_rows and rows < 256:
        note(progress, f"{rows} embeddings are too few for an ANN index (it needs 256); search stays exact")
    elif rows >= opts.min_rows:
        note(progress, f"building the {opts.index_type} ANN index over {rows:,} embeddings")
        ann = _create_ann(table, opts, rows, dim)
    return {
        "table": TABLE,
        "rows": rows,
        "embedding_dim": dim,
        "metric": METRIC,
        "ann": ann,
        "search": {
            "nprobes": opts.nprobes,
            "refine_factor": opts.refine_factor if ann and "PQ" in ann["type"] else None,
        },
        "ann_min_rows": opts.min_rows,
        "deployment": job["deployment"],
        "deployment_digest": job["deployment_digest"],
        "early_exit": job["early_exit"],
        "source": job["source"],
        "embeddings": str(files[0].parent),
    }
