"""One shard of an embedding job: its images decoded, run through the deployment, and encoded as a Parquet file.

The same function makes a shard in the single-process run and inside a Ray actor, so both write the same rows:
the shard's items are cut into batches of `batch` in order, a batch keeps the images that decode (unreadable
ones are listed with their reason, or stop the run with `strict`), and each batch is one `run_vision` call with the
folder's label-free early-exit rule.

Columns: `path`, `embedding` (float32 x embedding_dim, L2-normalised), `exit_block` (the block after which the
image left; the tower's depth = no early exit), `width`, `height` (the decoded image, after EXIF orientation),
`manifest_digest` (sha256 of the deployment's manifest.json), and `captions` for captions sources. The file's
key-value metadata `ovclip` holds the shard number, the digest of its item list (what a resumed run compares),
and the skipped images.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ovclip.data.images import load_image
from ovclip.embed.sources import Item
from ovclip.errors import OvclipError
from ovclip.extras import require

META_KEY = b"ovclip"


def pyarrow():
    return require("pyarrow", extra="index", feature="writing embeddings to Parquet")


def pyarrow_parquet():
    return require("pyarrow.parquet", extra="index", feature="writing embeddings to Parquet")


@dataclass(frozen=True)
class ShardSpec:
    """What every shard of a job shares (picklable: it travels to Ray actors)."""

    digest: str  # the deployment's manifest digest
    embedding_dim: int
    captions: bool  # the source has captions (adds the `captions` column)
    batch: int = 32
    early_exit: bool = True
    strict: bool = False


@dataclass
class _Rows:
    paths: list[str] = field(default_factory=list)
    captions: list[list[str] | None] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    exits: list[np.ndarray] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def items_digest(items: Sequence[Item]) -> str:
    """sha256 of a shard's item list (paths and captions, in order)."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.path, it.captions], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def _reason(e: OvclipError, path: str) -> str:
    msg = str(e)
    return msg[len(path) + 2 :] if msg.startswith(f"{path}: ") else msg


def _embed_batch(dep, chunk: Sequence[Item], spec: ShardSpec) -> _Rows:
    rows = _Rows()
    images = []
    for it in chunk:
        try:
            img = load_image(it.path)
        except OvclipError as e:
            if spec.strict:
                raise OvclipError(
                    f"{e} (`strict` stops at the first unreadable image; without it such images are skipped and "
                    "listed in _skipped.tsv)",
                    params="strict",
                ) from None
            rows.skipped.append((it.path, _reason(e, it.path)))
            continue
        images.append(img)
        rows.paths.append(it.path)
        rows.captions.append(list(it.captions) if it.captions is not None else None)
        rows.sizes.append(img.size)
    if images:
        out = dep.run_vision(dep.preprocess(images), early_exit=spec.early_exit)
        rows.embeddings.append(np.asarray(out.embeddings, np.float32))
        rows.exits.append(np.asarray(out.exit_layer, np.int16))
    return rows


def _in_order(fn, chunks: list, workers: int) -> Iterator:
    """`map(fn, chunks)` on `workers` threads with at most `workers + 1` chunks in flight (bounded memory); on an
    error the chunks not started yet are cancelled."""
    pool = ThreadPoolExecutor(workers)
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def embed_items(dep, items: Sequence[Item], spec: ShardSpec, workers: int = 1, on_batch=None) -> _Rows:
    """Embed `items` in batches of `spec.batch`; `workers` batches run at once (the Deployment is thread-safe).
    `on_batch(n)` is called after each batch of `n` items, in order, from the calling thread."""
    chunks = [items[i : i + spec.batch] for i in range(0, len(items), spec.batch)]
    merged = _Rows()
    for n, rows in _in_order(lambda c: (len(c), _embed_batch(dep, c, spec)), chunks, max(1, workers)):
        if on_batch is not None:
            on_batch(n)
        merged.paths += rows.paths
        merged.captions += rows.captions
        merged.sizes += rows.sizes
        merged.embeddings += rows.embeddings
        merged.exits += rows.exits
        merged.skipped += rows.skipped
    return merged


def schema(spec: ShardSpec):
    pa = pyarrow()
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), spec.embedding_dim), nullable=False),
        pa.field("exit_block", pa.int16(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("manifest_digest", pa.string(), nullable=False),
    ]
    if spec.captions:
        fields.append(pa.field("captions", pa.list_(pa.string())))
    return pa.schema(fields)


def _table(rows: _Rows, spec: ShardSpec, meta: dict):
    pa = pyarrow()
    n = len(rows.paths)
    dim = spec.embedding_dim
    emb = np.concatenate(rows.embeddings) if rows.embeddings else np.zeros((0, dim), np.float32)
    sizes = np.asarray(rows.sizes, np.int32).reshape(n, 2)
    columns = [
        pa.array(rows.paths, pa.string()),
        pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim),
        pa.array(np.concatenate(rows.exits) if rows.exits else np.zeros(0, np.int16), pa.int16()),
        pa.array(sizes[:, 0], pa.int32()),
        pa.array(sizes[:, 1], pa.int32()),
        pa.array([spec.digest] * n, pa.string()),
    ]
    if spec.captions:
        columns.append(pa.array(rows.captions, pa.list_(pa.string())))
    sch = schema(spec).with_metadata({META_KEY: json.dumps(meta, ensure_ascii=False).encode()})
    return pa.Table.from_arrays(columns, schema=sch)


def shard_bytes(
    dep, index: int, items: Sequence[Item], spec: ShardSpec, workers: int = 1, on_batch=None
) -> tuple[bytes, dict]:
    """Embed shard `index` and return (its Parquet file's bytes, its metadata)."""
    rows = embed_items(dep, items, spec, workers, on_batch)
    meta = {
        "shard": index,
        "items": len(items),
        "items_digest": items_digest(items),
        "rows": len(rows.paths),
        "skipped": [list(s) for s in rows.skipped],
    }
    buf = io.BytesIO()
    pyarrow_parquet().write_table(_table(rows, spec, meta), buf)
    return buf.getvalue(), meta
