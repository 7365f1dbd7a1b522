"""SIGKILL `ovclip export` at any moment: OUT is absent or complete, never a partial folder under its name.

Each scenario runs the real command, ``python -m ovclip.cli export --model <tiny> --out OUT``, and kills it
with SIGKILL when a moment is reached. Moments are events watched every 2 ms rather than fixed delays, so
they land where meant on a fast or a loaded machine:

- ``at:S``       S seconds after the start (during start-up, before anything is written);
- ``tmp:K``      the staging sibling ``.OUT.ovclip-tmp-*`` holds at least K files (mid-write);
- ``staged``     it holds every file but the manifest, which is written last (the swap comes next);
- ``replaced``   OUT holds a manifest other than the one it held before (after the swap, before the exit);
- ``finish``     no kill: the run must succeed.

After every step: OUT either does not exist (only when there was none before) or `read_manifest(OUT,
verify=True)` accepts it, its files are exactly the manifest's, and `Deployment` loads and runs it; killed
before the swap, a previous OUT is byte-identical. Leftover staging siblings are allowed after a kill, and
must be gone after the next run that gets as far as writing. Scenario chains run in parallel (~40 s budget).
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_model

from ovclip.folder import read_manifest
from ovclip.runtime import Deployment

REPO = Path(__file__).resolve().parents[1]
POLL = 0.002
STEP_TIMEOUT = 240


def save_tiny_clip(folder: Path, seed: int = 0) -> None:
    build_tiny_model(seed).save_pretrained(folder)


def staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.ovclip-tmp-*"))


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _manifest_ino(out: Path) -> int | None:
    try:
        return (out / "manifest.json").stat().st_ino
    except OSError:
        return None


def _n_files(folder: Path) -> int:
    try:
        return sum(1 for _ in folder.iterdir())
    except OSError:
        return 0


@dataclass
class Step:
    moment: str  # at:S | tmp:K | staged | replaced | finish
    overwrite: bool = True


@dataclass
class Outcome:
    step: Step
    fired: bool  # the moment was reached while the process ran, and it was killed then
    returncode: int
    seconds: float
    out_existed: bool
    leftovers: list[str]  # names of the staging siblings left after the step
    swapped: bool  # OUT's manifest is another file than before the step (a new folder was moved in)


@dataclass
class Scenario:
    name: str
    previous: bool  # a good OUT exists before the first step
    steps: list[Step]
    outcomes: list[Outcome] = field(default_factory=list)


def _trigger(moment: str, out: Path, t0: float, ino_before: int | None, n_files: int):
    if moment.startswith("at:"):
        s = float(moment[3:])
        return lambda: time.monotonic() - t0 >= s
    if moment.startswith("tmp:") or moment == "staged":
        k = n_files - 1 if moment == "staged" else int(moment[4:])
        return lambda: any(_n_files(t) >= k for t in staging(out))
    if moment == "replaced":
        return lambda: _manifest_ino(out) not in (None, ino_before)
    if moment == "finish":
        return lambda: False
    raise ValueError(moment)


def run_step(out: Path, model: Path, step: Step, log: Path, n_files: int) -> Outcome:
    cmd = [sys.executable, "-m", "ovclip.cli", "export", "--model", str(model), "--out", str(out)]
    cmd += ["--overwrite"] if step.overwrite else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ino_before = _manifest_ino(out)
    with open(log, "ab") as f:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=f, env=env)
        fire = _trigger(step.moment, out, t0, ino_before, n_files)
        fired = False
        try:
            while proc.poll() is None:
                if fire():
                    proc.send_signal(signal.SIGKILL)
                    fired = True
                    break
                if time.monotonic() - t0 > STEP_TIMEOUT:
                    proc.kill()
                    raise AssertionError(f"{cmd} ran over {STEP_TIMEOUT} s")
                time.sleep(POLL)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    swapped = _manifest_ino(out) != ino_before
    return Outcome(step, fired, rc, time.monotonic() - t0, out.exists(), [t.name for t in staging(out)], swapped)


def check_out(out: Path, previous: dict[str, str] | None, must_be_previous: bool) -> None:
    """OUT is absent (only if there was none) or complete and loadable; `must_be_previous`: unchanged."""
    if not out.exists():
        assert previous is None, f"{out}: the previous good folder is gone"
        return
    manifest = read_manifest(out, verify=True)  # every listed file present with its sha256
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(manifest["files"]) | {"manifest.json"}, f"{out}: files beyond the manifest's"
    if must_be_previous:
        assert digests(out) == previous, f"{out}: the previous folder was changed"
    dep = Deployment(out)
    emb = dep.run_vision(np.zeros((2, 3, 64, 64), np.float32)).embeddings
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
    assert np.isfinite(dep.encode_text(["a photo"])).all()


# Four full runs in two chains (the "at:" kills cost well under a second each); the chains run in parallel.
SCENARIOS = [
    Scenario("fresh", False, [Step("at:0.2", False), Step("tmp:1", False), Step("finish", False)]),
    Scenario("previous", True, [Step("at:0.5"), Step("at:1"), Step("at:2"), Step("staged"), Step("replaced")]),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny checkpoint and a good FP32 folder of it (exported in-process, the previous OUT)."""
    from ovclip.checkpoint import load_checkpoint
    from ovclip.export import ExportOptions, export_deployment

    root = tmp_path_factory.mktemp("sigkill-src")
    save_tiny_clip(root / "clip")
    export_deployment(load_checkpoint(str(root / "clip")), root / "good", ExportOptions())
    return root / "clip", root / "good"


def play(scenario: Scenario, root: Path, model: Path, good: Path) -> Scenario:
    out = root / scenario.name / "OUT"
    out.parent.mkdir(parents=True)
    if scenario.previous:
        shutil.copytree(good, out)
    for step in scenario.steps:
        previous = digests(out) if out.exists() else None
        outcome = run_step(out, model, step, root / f"{scenario.name}.log", len(digests(good)))
        scenario.outcomes.append(outcome)
        if step.moment == "finish":
            assert outcome.returncode == 0, (root / f"{scenario.name}.log").read_text()[-2000:]
            assert not outcome.leftovers, f"{scenario.name}: staging leftovers survive a successful run"
            check_out(out, None, must_be_previous=False)
            continue
        # killed before the swap (checked, not assumed: a loaded machine may let the writer run on a little)
        check_out(out, previous, must_be_previous=previous is not None and not outcome.swapped)
    return scenario


def test_sigkill_export_leaves_old_or_new_never_partial(sources, tmp_path):
    model, good = sources
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        done = list(pool.map(lambda s: play(s, tmp_path, model, good), SCENARIOS))
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    table = "\n".join(
        f"{s.name:<30} {o.step.moment:<9} fired={o.fired!s:<5} rc={o.returncode:<3} {o.seconds:5.1f}s "
        f"OUT={'yes' if o.out_existed else 'no ':<3} swapped={o.swapped!s:<5} leftovers={len(o.leftovers)}"
        for s in done
        for o in s.outcomes
    )
    print(f"\n{table}\nsubprocess CPU time: {cpu:.1f} s (wall on an idle machine is about this / cores)")
    by_name = {s.name: s.outcomes for s in done}
    fresh, previous = by_name["fresh"], by_name["previous"]
    # the kills landed where intended: before writing, mid-write (leaving a staging folder), after the swap
    early = [fresh[0], *previous[:3]]
    assert all(o.fired and o.returncode == -signal.SIGKILL for o in early), table
    assert not fresh[0].out_existed and not fresh[0].leftovers, table
    assert fresh[1].fired and fresh[1].leftovers and not fresh[1].out_existed, table
    assert previous[3].fired and previous[3].leftovers, table  # staged: the old OUT is kept unless it was swapped
    assert not any(o.swapped for o in early), table
    # the next run cleans what the killed one left, whether it finishes or is itself killed after the swap
    assert fresh[2].returncode == 0 and not fresh[2].leftovers, table
    assert not set(previous[3].leftovers) & set(previous[4].leftovers), table
    assert previous[4].out_existed, table
    if not previous[4].fired:  # the window between the swap and the exit is short; say so if it was missed
        pytest.skip(f"the process exited before a kill could land after the swap:\n{table}")
