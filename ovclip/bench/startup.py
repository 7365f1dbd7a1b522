"""Time to the first result: compile time and first-inference time of one record, each in a fresh process
(nothing compiled before, no kernels cached in memory), with OpenVINO's model cache (CACHE_DIR) off, cold
(an empty cache folder, written by this compile) and warm (the folder the cold run wrote).

The child runs `python -c "from ovclip.bench.startup import child; child()" SPEC OUT`: SPEC is the JSON of the
record's settings, OUT the file its JSON result goes to.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ovclip.errors import OvclipError
from ovclip.progress import Progress, advance, note

MODES = ("off", "cold", "warm")
TIMEOUT_S = 900  # a first NPU compile takes ~1.5 min; a hung child must not hang the bench


def child() -> None:
    """Entry point of the fresh process (see the module docstring)."""
    spec = json.loads(sys.argv[1])
    Path(sys.argv[2]).write_text(json.dumps(startup_once(**spec)))


def startup_once(
    folder: str,
    device: str,
    hint: str,
    precision: str | None,
    runtime: str,
    early_exit: bool,
    classes: int,
    batch: int,
    cache_dir: str | None,
) -> dict:
    """In this process: read the folder, compile what `run_vision` needs, run one batch (random pixels; random
    unit class embeddings when the exit rule scores `classes` classes). Seconds and milliseconds per step."""
    import numpy as np

    t0 = time.perf_counter()
    from ovclip.runtime import Deployment

    t1 = time.perf_counter()
    dep = Deployment(folder, device, hint=hint, inference_precision=precision, runtime=runtime, cache_dir=cache_dir)
    t2 = time.perf_counter()
    rng = np.random.default_rng(0)
    cls = None
    if classes:
        cls = rng.standard_normal((classes, int(dep.manifest["embedding_dim"]))).astype(np.float32)
        cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    policy = (dep.policy if cls is not None else dep.embedding_policy) if early_exit else None
    dep.compile_vision(policy, batch, classes if cls is not None else 0)
    t3 = time.perf_counter()
    s = dep.vision["image_size"]
    dep.run_vision(rng.standard_normal((batch, 3, s, s), dtype=np.float32), cls, early_exit=early_exit)
    t4 = time.perf_counter()
    return {
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "compile_s": t3 - t2,
        "first_inference_ms": 1000 * (t4 - t3),
        "to_first_result_s": t4 - t1,
        "runtime": dep.runtime,
    }


def _fresh(spec: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="ovclip-startup-") as d:
        out = Path(d) / "result.json"
        code = "from ovclip.bench.startup import child; child()"
        try:
            done = subprocess.run(
                [sys.executable, "-c", code, json.dumps(spec), str(out)],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise OvclipError(f"{spec['folder']}: the startup measurement ran past {TIMEOUT_S} s") from None
        if done.returncode != 0 or not out.exists():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise OvclipError(f"{spec['folder']}: the startup measurement failed in its fresh process ({last})")
        return json.loads(out.read_text())


def measure_startup(spec: dict) -> dict:
    """`startup_once` in three fresh processes: cache off, cold (empty folder), warm (the folder cold wrote)."""
    with tempfile.TemporaryDirectory(prefix="ovclip-cache-") as cache:
        res = {
            "off": _fresh({**spec, "cache_dir": None}),
            "cold": _fresh({**spec, "cache_dir": cache}),
        }
        files = [p for p in Path(cache).rglob("*") if p.is_file()]
        res["cache_files"], res["cache_bytes"] = len(files), sum(p.stat().st_size for p in files)
        res["warm"] = _fresh({**spec, "cache_dir": cache})
    res["warm_over_off_compile"] = res["warm"]["compile_s"] / max(res["off"]["compile_s"], 1e-9)
    return res


def add_startup(prepared, settings, progress: Progress | None) -> None:
    """A "startup" entry on every record (`measure_startup`)."""
    for k, p in enumerate(prepared):
        rec = p.record
        spec = {
            "folder": str(Path(rec["model"]).resolve()),
            "device": settings.device,
            "hint": settings.performance_hint,
            "precision": p.variant.precision,
            "runtime": settings.runtime,
            "early_exit": p.variant.early_exit,
            "classes": 0 if p.class_emb is None else len(p.class_emb),
            "batch": settings.query_size,
        }
        rec["startup"] = measure_startup(spec)
        advance(progress, "startup (fresh processes)", (k + 1) / len(prepared))
        s = rec["startup"]
        note(
            progress,
            f"{Path(rec['model']).name} {rec['variant']}: compile {s['off']['compile_s']:.2f} s without cache, "
            f"{s['cold']['compile_s']:.2f} s cold, {s['warm']['compile_s']:.2f} s warm; first inference "
            f"{s['off']['first_inference_ms']:.1f} ms",
        )
