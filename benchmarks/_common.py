"""Shared plumbing for the benchmark scripts: the header every run prints (command, machine, versions),
timing helpers on top of `ovclip.bench.throughput.measure`, zero-shot scoring, tables and JSON output.

Imports only the standard library, numpy and the parts of ovclip that need no torch, so the scripts that
run inside the peers' virtual environment (/opt/peers-venv) can use it too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

CORE_PACKAGES = ("ovclip", "openvino", "nncf", "numpy", "torch", "transformers")


# --- who, where, what ---------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*CORE_PACKAGES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import openvino as ov

        out["openvino_build"] = ov.get_version()
    except ImportError:
        pass
    return out


def git_commit() -> str | None:
    head = REPO / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (REPO / ".git" / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return None


def machine() -> dict:
    flags = set(cpu_flags())
    info = {
        "cpu": cpu_model(),
        "cores": cores(),
        "memory_gib": mem_gib(),
        "avx512_vnni": "avx512_vnni" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "os": platform.platform(),
    }
    try:
        import openvino as ov

        core = ov.Core()
        info["openvino_cpu"] = core.get_property("CPU", "FULL_DEVICE_NAME")
        info["openvino_cpu_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        info["openvino_cpu_default_inference_precision"] = str(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        info["openvino_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return info


def load_now() -> dict:
    """System load and the busiest other processes: a run made beside another heavy job is flagged."""
    la = os.getloadavg()
    busy = []
    try:
        import subprocess

        ps = subprocess.run(
            ["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=5
        ).stdout.splitlines()[1:6]
        me = os.getpid()
        for line in ps:
            pid, pcpu, comm = line.split(None, 2)
            if int(pid) != me and float(pcpu) >= 20:
                busy.append(f"{comm}({pid}) {pcpu}%")
    except Exception:  # noqa: BLE001
        pass
    return {"loadavg_1m": round(la[0], 2), "loadavg_5m": round(la[1], 2), "busy_processes": busy}


class Run:
    """One benchmark run: prints the header, collects results, writes benchmarks/results/<name>.json."""

    def __init__(self, name: str, extra_packages: Sequence[str] = (), note: str | None = None):
        self.name = name
        self.t0 = time.time()
        self.data: dict = {
            "benchmark": name,
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "machine": machine(),
            "versions": versions(extra_packages),
            "load_at_start": load_now(),
        }
        if note:
            self.data["note"] = note
        m, v = self.data["machine"], self.data["versions"]
        print(f"== {name}")
        print(f"command : {self.data['command']}")
        print(f"started : {self.data['started_utc']}  (git {self.data['git_commit']})")
        print(
            f"machine : {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; AVX-512 VNNI {m['avx512_vnni']}, "
            f"bf16 (AMX/AVX512_BF16) {m['amx_bf16'] or m['avx512_bf16']}"
        )
        if "openvino_cpu_capabilities" in m:
            print(
                f"openvino: CPU capabilities {','.join(m['openvino_cpu_capabilities'])}; "
                f"default INFERENCE_PRECISION_HINT {m['openvino_cpu_default_inference_precision']}"
            )
        print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
        la = self.data["load_at_start"]
        print(f"load    : {la['loadavg_1m']} (1 min); busy: {', '.join(la['busy_processes']) or 'nothing else'}")
        if note:
            print(f"note    : {note}")
        print(flush=True)

    def contended(self) -> bool:
        a, b = self.data["load_at_start"], self.data.get("load_at_end", {})
        return bool(a["busy_processes"] or b.get("busy_processes"))

    def finish(self, path: Path | None = None) -> Path:
        self.data["load_at_end"] = load_now()
        self.data["seconds_total"] = round(time.time() - self.t0, 1)
        self.data["contended"] = self.contended()
        path = path or RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data, indent=2, default=_json_default) + "\n")
        if self.data["contended"]:
            print(
                "\nWARNING: other processes were busy during this run (see load_at_start/load_at_end); "
                "timings are contended"
            )
        print(f"\nwrote {path} ({self.data['seconds_total']} s)")
        return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# --- tables -------------------------------------------------------------------------------------------


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], title: str | None = None) -> str:
    """columns: (key, header, format spec like '.1f' or ''); None prints as '-'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key)
            line.append("-" if v is None else (format(v, fmt) if fmt else str(v)))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    out = [title] if title else []
    for k, c in enumerate(cells):
        pairs = enumerate(zip(c, widths, strict=True))
        out.append("  ".join(s.rjust(w) if k and i else s.ljust(w) for i, (s, w) in pairs))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# --- timing -------------------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median: how far the repeats disagree."""
    m = median(xs)
    return float((max(xs) - min(xs)) / m) if m else 0.0


def ov_runner(compiled, share_outputs: bool = False) -> Callable[[np.ndarray], object]:
    """run(batch) on a compiled OpenVINO model with one infer request per calling thread.

    Inputs are shared, not copied, as ovclip's Deployment does, so peers and ovclip get the same harness."""
    tls = threading.local()

    def run(batch: np.ndarray):
        req = getattr(tls, "req", None)
        if req is None:
            req = tls.req = compiled.create_infer_request()
        return req.infer({0: batch}, share_inputs=True, share_outputs=share_outputs)

    return run


def optimal_nireq(compiled) -> int:
    try:
        return int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    except RuntimeError:
        return 1


def executed_precision(compiled) -> str:
    from ovclip.runtime.device import executed_precision as ep

    return ep(compiled)


def runtime_matmuls(compiled) -> dict:
    """What the CPU plugin really runs: MatMul/FullyConnected nodes, how many in i8/u8, and their kernels."""
    total = int8 = 0
    kernels: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()

        def get(key: str, info=info) -> str:
            return info[key].astype(str) if key in info else ""

        if get("layerType") in ("FullyConnected", "MatMul"):
            total += 1
            int8 += get("runtimePrecision").lower() in ("i8", "u8")
            k = get("primitiveType")
            kernels[k] = kernels.get(k, 0) + 1
    return {"total": total, "int8": int8, "kernels": kernels}


def timed(run, batches, nireq: int, seconds: float) -> dict:
    """One timing with ovclip's engine (benchmark_app's method: nireq in flight, warm-up not counted)."""
    from ovclip.bench.throughput import measure

    t = measure(run, batches, nireq=nireq, seconds=seconds)
    return {"throughput": t.throughput_fps, "latency_median_ms": t.latency_ms["median"], "iterations": t.batches}


def compiled_timer(
    compiled, batches, seconds: float, *, share_outputs: bool = False, per_sample: float | None = None
) -> Callable[[], dict]:
    """A runner for `interleaved`: one timing of a compiled model at its optimal nireq. With `per_sample`
    (FLOPs per sample) the 'throughput' is G(FL)OP/s instead of samples/s."""
    run, nireq = ov_runner(compiled, share_outputs), optimal_nireq(compiled)

    def once() -> dict:
        r = timed(run, batches, nireq=nireq, seconds=seconds)
        if per_sample is not None:
            r = {"throughput": r["throughput"] * per_sample / 1e9, "latency_median_ms": r["latency_median_ms"]}
        return r

    return once


def deployment_timer(
    dep, batches, seconds: float, *, class_emb=None, early_exit: bool = False, nireq: int | None = None
) -> Callable[[], dict]:
    """A runner for `interleaved`: one timing of `dep.run_vision` (an ovclip Deployment) at `nireq`, by default
    the device's optimal number of requests."""
    from ovclip.bench.runner import optimal_nireq as deployment_nireq

    n = nireq or deployment_nireq(dep)

    def run(batch: np.ndarray):
        return dep.run_vision(batch, class_emb, early_exit=early_exit)

    return lambda: timed(run, batches, nireq=n, seconds=seconds)


def function_timer(fn: Callable[[np.ndarray], object], batches, seconds: float) -> Callable[[], dict]:
    """A runner for `interleaved`: one timing of `fn(batch)` from one thread (torch uses all cores itself)."""
    return lambda: timed(fn, batches, nireq=1, seconds=seconds)


def print_timing(what: str) -> None:
    """The 'timing  :' header line every script prints before its interleaved rounds."""
    print(f"timing  : {what}", flush=True)


def interleaved(runs: dict[str, Callable[[], dict]], repeats: int, log=print) -> dict[str, dict]:
    """Call every runner once per round, `repeats` rounds, in rotating order (drift hits all alike) — the
    rounds of `ovclip bench` (`ovclip.bench.rounds.rotating_rounds`).

    Each runner returns a dict with 'throughput'; the result per name holds the list and its median.
    """
    from ovclip.bench.rounds import rotating_rounds

    got = rotating_rounds(
        runs, repeats, on_result=lambda r, n, res: log(f"  round {r + 1}/{repeats} {n}: {res['throughput']:.2f}")
    )
    out = {}
    for n, results in got.items():
        tp = [g["throughput"] for g in results]
        out[n] = {
            "median": median(tp),
            "runs": tp,
            "spread": spread(tp),
            "latency_median_ms": median([g.get("latency_median_ms") or 0.0 for g in results]),
        }
        extra = {k: v for k, v in results[-1].items() if k not in ("throughput", "latency_median_ms", "iterations")}
        out[n].update(extra)
    return out


# --- OpenVINO's benchmark_app -------------------------------------------------------------------------


def benchmark_app_command(exe: str, ir: Path, shape: Sequence[int], seconds: float, precision: str | None) -> list[str]:
    """benchmark_app on `ir` with ovclip's settings: CPU, THROUGHPUT hint, static `shape`, optional precision."""
    cmd = [exe, "-m", str(ir), "-d", "CPU", "-hint", "throughput", "-t", str(int(round(seconds)))]
    cmd += ["-shape", "[" + ",".join(map(str, shape)) + "]"]
    return cmd + (["-infer_precision", precision] if precision else [])


def benchmark_app_timer(cmd: list[str], batch: int) -> Callable[[], dict]:
    """A runner for `interleaved`: one benchmark_app run, its report parsed (see `parse_benchmark_app`)."""
    import subprocess

    def once() -> dict:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"benchmark_app failed ({p.returncode}):\n{(p.stdout + p.stderr)[-2000:]}")
        return parse_benchmark_app(p.stdout + p.stderr, batch)

    return once


def _precision(text: str | None) -> str | None:
    if text is None:
        return None
    t = text.strip().lower()
    for long, short in (("bfloat16", "bf16"), ("float32", "f32"), ("float16", "f16"), ("f32", "f32"), ("bf16", "bf16")):
        if long in t:
            return short
    return t


def parse_benchmark_app(text: str, batch: int) -> dict:
    """Throughput, iterations, latency, requests and precision from benchmark_app's report."""
    import re

    def grab(pattern: str, cast=float):
        m = re.findall(pattern, text)
        return cast(m[-1]) if m else None

    r = {
        "throughput": grab(r"Throughput:\s+([\d.]+)\s*FPS"),
        "iterations": grab(r"Count:\s+(\d+)\s+iterations", int),
        "duration_ms": grab(r"Duration:\s+([\d.]+)\s*ms"),
        "latency_median_ms": grab(r"Median:\s+([\d.]+)\s*ms"),
        "nireq": grab(r"(\d+) inference requests", int),
        "inference_precision": _precision(grab(r"INFERENCE_PRECISION_HINT:\s+(.+)", str)),
        "num_streams": grab(r"NUM_STREAMS:\s+(\d+)", int),
    }
    if r["throughput"] is None:
        raise RuntimeError("benchmark_app printed no Throughput line:\n" + text[-2000:])
    if r["iterations"] and r["duration_ms"]:
        r["throughput_from_count"] = r["iterations"] * batch / (r["duration_ms"] / 1000)
    return r


def random_batches(batch: int, size: int = 224, n: int = 4, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, size, size), dtype=np.float32) for _ in range(n)]


def image_batches(pixels: np.ndarray, batch: int) -> list[np.ndarray]:
    """`pixels` in calls of `batch` images, as `ovclip bench` cuts its pool (`ovclip.bench.offline_batch.rebatch`)."""
    from ovclip.bench.offline_batch import rebatch

    return rebatch([pixels], batch)


# --- zero-shot ----------------------------------------------------------------------------------------


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(encode_text: Callable[[list[str]], np.ndarray], prompt_names, templates) -> np.ndarray:
    """ovclip's prompt ensemble: per class, the mean of normalised prompt embeddings, renormalised."""
    from ovclip.data.prompts import class_prompts, ensemble

    prompts = class_prompts(list(prompt_names), list(templates))
    flat = [p for per in prompts for p in per]
    emb = np.asarray(encode_text(flat), np.float32).reshape(len(prompt_names), len(templates), -1)
    return ensemble(emb)


def top1(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((l2n(image_emb) @ class_emb.T).argmax(1) == labels))


def embed_all(run_images: Callable[[np.ndarray], np.ndarray], dataset, cfg, n: int, chunk: int = 64) -> np.ndarray:
    """Image embeddings of the first n images, preprocessed by ovclip, computed chunk by chunk."""
    out = []
    for i in range(0, n, chunk):
        px = dataset.pixels(np.arange(i, min(i + chunk, n)), cfg)
        out.append(np.asarray(run_images(px), np.float32))
    return np.concatenate(out)


def builtin_model_or_exit(src: str) -> str:
    """'builtin' resolves to the shipped model folder; stop with a clear line when it is not built yet."""
    if src in ("builtin", None):
        from ovclip.checkpoint.sources import BUILTIN_MODEL_DIR

        if not (BUILTIN_MODEL_DIR / "config.json").is_file():
            sys.exit(
                f"the built-in model ({BUILTIN_MODEL_DIR}) is not there yet (it is written when training ends); "
                "pass --model with an HF CLIP folder, e.g. /tmp/ckpt_mid"
            )
        return str(BUILTIN_MODEL_DIR)
    return src
