"""The output folder of an embedding job: what it holds and how it is written so that a killed run resumes.

    OUT/_embed.json         the job: source, deployment folder and manifest digest, shard size, early exit
    OUT/part-00000.parquet  shard 0: the first `shard_size` images of the source (see `ovclip.embed.shard`)
    OUT/...
    OUT/_skipped.tsv        unreadable images (path, reason), written when every shard is done
    OUT/_summary.json       images, rows, skipped, exit histogram, written when every shard is done

The bookkeeping files start with `_`, which Parquet readers skip, so `pyarrow.parquet.read_table(OUT)` (or Ray's,
pandas', Spark's `read_parquet`) reads the shards as one table.

Every file is written beside its name (`.NAME.tmp-*`) and renamed into place, so a file under its name is always
complete. A shard is done when its file exists and records the digest of the item list the source gives for that
shard now; a run resumes by skipping done shards and redoing the rest. A source whose shard lists differ from the
recorded ones (images added, removed or renamed) is an error: resuming it would miss or repeat images.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

from ovclip.embed.shard import META_KEY, pyarrow_parquet
from ovclip.errors import OvclipError
from ovclip.extras import require

FORMAT = "ovclip-embeddings"
FORMAT_VERSION = 1
JOB_FILE = "_embed.json"
SUMMARY_FILE = "_summary.json"
SKIPPED_FILE = "_skipped.tsv"
_IDENTITY = ("source", "deployment_digest", "shard_size", "early_exit")


def shard_path(out: Path, index: int) -> Path:
    return out / f"part-{index:05d}.parquet"


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def manifest_digest(folder: Path) -> str:
    """sha256 of a deployment folder's manifest.json (which holds the sha256 of every other file)."""
    return hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either absent, its old content, or all of `data`."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: dict) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def read_job(out: Path) -> dict:
    path = Path(out) / JOB_FILE
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OvclipError(f"{out}: no {JOB_FILE}, so this is not the output folder of `ovclip embed`") from None
    except (OSError, ValueError) as e:
        raise OvclipError(f"{path}: unreadable ({e}); run `ovclip embed` again into a new folder") from None
    if not isinstance(job, dict) or job.get("format") != FORMAT:
        raise OvclipError(f"{path}: not an ovclip embeddings job file")
    return job


def open_out(out: Path, job: dict) -> None:
    """Create OUT for `job`, or check that OUT holds the same job (then its done shards are kept)."""
    if out.exists() and not out.is_dir():
        raise OvclipError(f"{out}: exists and is not a folder; choose an output folder")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / JOB_FILE).exists():
        others = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if others:
            raise OvclipError(
                f"{out}: holds other files ({others[0]}, ...) and no {JOB_FILE}; choose an empty or new output folder"
            )
        write_json(out / JOB_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION, **job})
    else:
        _check_same_job(out, read_job(out), job)
    for stale in out.glob(".*.tmp-*"):  # left by a killed run
        stale.unlink(missing_ok=True)


def _check_same_job(out: Path, old: dict, new: dict) -> None:
    for key in _IDENTITY:
        if old.get(key) != new.get(key):
            raise OvclipError(
                f"{out} holds a job with {key} {old.get(key)!r}, not {new.get(key)!r}; resume with the same "
                "source, deployment folder and settings, or choose a new output folder"
            )


def shard_meta(path: Path) -> dict | None:
    """The `ovclip` metadata of a shard file; None if it is missing or unreadable (then it is redone)."""
    if not path.exists():
        return None
    try:
        meta = pyarrow_parquet().read_schema(path).metadata or {}
        return json.loads(meta[META_KEY])
    except OvclipError:
        raise
    except Exception:  # noqa: BLE001 - a damaged file is simply made again
        return None


def shard_done(out: Path, index: int, digest: str) -> bool:
    """True when shard `index` is written for the same item list; raise if it was written for another one."""
    path = shard_path(out, index)
    meta = shard_meta(path)
    if meta is None:
        return False
    if meta.get("items_digest") != digest:
        raise OvclipError(
            f"{path}: written for other images than the source lists for shard {index} now (images were added, "
            "removed or renamed since this output was started); embed into a new output folder"
        )
    return True


def check_no_extra_shards(out: Path, n_shards: int) -> None:
    extra = [p for p in shard_files(out) if int(p.stem.split("-")[1]) >= n_shards]
    if extra:
        raise OvclipError(
            f"{extra[0]}: the source now has only {n_shards} shard(s) (images were removed since this output was "
            "started); embed into a new output folder"
        )


def finalize(out: Path, n_shards: int, images: int) -> dict:
    """Write skipped.tsv and summary.json from the shard files; return the summary."""
    pq = pyarrow_parquet()
    pc = require("pyarrow.compute", extra="index", feature="reading embeddings from Parquet")
    hist: dict[int, int] = {}
    skipped_lines: list[str] = []
    rows = 0
    for index in range(n_shards):
        path = shard_path(out, index)
        meta = shard_meta(path)
        if meta is None:
            raise OvclipError(f"{path}: missing or unreadable; run the same `ovclip embed` command again")
        exits = pq.read_table(path, columns=["exit_block"]).column(0)
        for value, count in zip(*_value_counts(pc, exits), strict=True):
            hist[value] = hist.get(value, 0) + count
        rows += len(exits)
        skipped_lines += [f"{p}\t{' '.join(r.split())}\n" for p, r in meta["skipped"]]
    write_atomic(out / SKIPPED_FILE, ("path\treason\n" + "".join(skipped_lines)).encode())
    summary = {
        "images": images,
        "rows": rows,
        "skipped": len(skipped_lines),
        "shards": n_shards,
        "exit_histogram": {str(k): hist[k] for k in sorted(hist)},
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _value_counts(pc, column) -> tuple[list[int], list[int]]:
    counts = pc.value_counts(column)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()
