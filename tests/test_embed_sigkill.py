"""SIGKILL `ovclip embed ... --index` at three moments, re-run the same command each time: the end result is exactly
the rows (and the index) of an uninterrupted run, and shards finished before a kill are kept, not redone.

The real command runs as a subprocess (``python -m ovclip.cli embed TREE --deployment D --out OUT --index IDX``)
and is killed when a moment is reached, watched every 2 ms (events, not fixed delays):

- ``shards:1``  the first shard file appears: the process is between shards 0 and 1;
- ``mid``       two more shard files appear, then half the time between them passes: the process is in the middle
                of the next shard (checked afterwards: no further shard file was written);
- ``index``     the index's staging folder appears: every shard is written, the LanceDB write is under way;
- ``finish``    no kill: the run must succeed.

After every kill, each shard file under its name is complete (readable, with its metadata) and no index exists
under IDX; after the final run no temporary file or staging folder is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from embed_support import early_exit_folder, write_fmnist_tree

from ovclip.embed import EmbedOptions, embed_collection
from ovclip.embed.store import shard_meta
from ovclip.index import Index, build_index

REPO = Path(__file__).resolve().parents[1]
N, SHARD, BATCH = 190, 32, 2  # 6 shards (the bad files make 192 items), batches of 2 so a shard takes a while
POLL = 0.002
STEP_TIMEOUT = 240


@pytest.fixture(scope="module")
def setup(fp32_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("sigkill-embed")
    images = write_fmnist_tree(root / "tree", N)
    good = [p for p in images if p.name not in ("corrupt.png", "empty.jpg")]
    folder = early_exit_folder(fp32_folder, root / "tiny-ee", good[:64])
    ref = root / "ref"
    embed_collection(root / "tree", folder, ref, EmbedOptions(shard_size=SHARD, batch=BATCH))
    build_index(ref, root / "ref-idx")
    return root, folder


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet")) if out.exists() else []


def _staging(idx: Path) -> list[Path]:
    return sorted(idx.parent.glob(f".{idx.name}.ovclip-*"))


class Watch:
    """Decides, polled every POLL seconds, whether the moment has come."""

    def __init__(self, moment: str, out: Path, idx: Path) -> None:
        self.moment, self.out, self.idx = moment, out, idx
        self.start = len(_parts(out))
        self.seen: list[tuple[int, float]] = []  # (shard files, time) each time the count grew
        self.kill_at: float | None = None

    def __call__(self) -> bool:
        n = len(_parts(self.out))
        if not self.seen or n > self.seen[-1][0]:
            self.seen.append((n, time.monotonic()))
        if self.moment == "shards:1":
            return n >= 1
        if self.moment == "mid":
            grown = [t for c, t in self.seen if c > self.start]
            if self.kill_at is None and len(grown) >= 2:
                self.kill_at = grown[1] + (grown[1] - grown[0]) / 2
            return self.kill_at is not None and time.monotonic() >= self.kill_at
        if self.moment == "index":
            return bool(_staging(self.idx))
        return False


def run_step(cmd: list[str], moment: str, out: Path, idx: Path, log: Path) -> tuple[int, bool, int, int]:
    """Run the command until `moment`, kill it then; returns (returncode, fired, shard files at the start, at the
    kill)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    watch = Watch(moment, out, idx)
    with open(log, "ab") as f:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=f, env=env)
        fired, at_kill = False, -1
        try:
            while proc.poll() is None:
                if watch():
                    proc.send_signal(signal.SIGKILL)
                    fired, at_kill = True, len(_parts(out))
                    break
                assert time.monotonic() - t0 < STEP_TIMEOUT, f"{cmd} ran over {STEP_TIMEOUT} s"
                time.sleep(POLL)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, fired, watch.start, at_kill


def check_after_kill(out: Path, idx: Path) -> None:
    for p in _parts(out):
        meta = shard_meta(p)
        assert meta is not None, f"{p}: a shard file under its name is incomplete"
        assert pq.read_table(p).num_rows == meta["rows"]
    assert not idx.exists(), "an index appeared before the run finished"


def _sorted(table):
    return table.sort_by("path")


def test_sigkill_embed_three_times_then_finish_gives_the_uninterrupted_rows(setup, tmp_path):
    root, folder = setup
    out, idx, log = tmp_path / "out", tmp_path / "idx", tmp_path / "embed.log"
    cmd = [sys.executable, "-m", "ovclip.cli", "embed", str(root / "tree"), "--deployment", str(folder),
           "--out", str(out), "--index", str(idx), "--shard-size", str(SHARD), "--batch", str(BATCH)]  # fmt: skip
    inodes: dict[str, int] = {}
    steps = []
    for moment in ("shards:1", "mid", "index"):
        rc, fired, start, at_kill = run_step(cmd, moment, out, idx, log)
        steps.append((moment, rc, start, at_kill))
        assert fired and rc == -signal.SIGKILL, (steps, log.read_text()[-2000:])
        check_after_kill(out, idx)
        for p in _parts(out):  # a shard written before a kill is never written again
            assert inodes.setdefault(p.name, p.stat().st_ino) == p.stat().st_ino, p
    (_, _, _, first), (_, _, mid_start, mid_at), (_, _, _, all_parts) = steps
    assert first >= 1, steps
    # killed half a shard after the second new shard file, before a third: inside a shard, work in memory lost
    assert mid_at == mid_start + 2 and mid_at < 6, steps
    assert all_parts == 6 and (out / "_summary.json").exists(), steps  # the index kill came after the last shard
    rc, _, _, _ = run_step(cmd, "finish", out, idx, log)
    assert rc == 0, log.read_text()[-3000:]
    assert _sorted(pq.read_table(out)).equals(_sorted(pq.read_table(root / "ref")))
    assert pq.read_table(out).num_rows == N
    for name in ("_summary.json", "_skipped.tsv"):
        assert (out / name).read_text() == (root / "ref" / name).read_text()
    got = _sorted(Index(idx).table.to_arrow())
    assert got.equals(_sorted(Index(root / "ref-idx").table.to_arrow())) and got.num_rows == N
    assert not list(out.glob(".*")) and not _staging(idx), "temporary files left after a finished run"
    print(f"\nsteps (moment, returncode, shard files at the start, at the kill): {steps}")
