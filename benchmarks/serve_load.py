"""Load test of `ovclip serve`: concurrent HTTP clients on loopback against the real CLI server, beside
`ovclip bench`'s offline throughput of the same folder in the same run.

For each round (rounds rotate the variants): `ovclip bench FOLDER --no-accuracy` (offline: preprocessed pixels,
batch 8, nireq = the device's optimum), then, per images-per-request setting, CLIENTS concurrent clients post
real Fashion-MNIST PNGs (multipart) to /v1/classify with the built-in label set (so the folder's label exit
policy runs, as in bench's `int8-ee` record) for SECONDS after a warm-up. Reported per setting: server errors
(non-200 or failed connections), p50/p99 latency, images/s, the ratio to bench's int8-ee (and int8) img/s, and
where the time goes:
  - per request (wall): client latency = HTTP (client <-> Ray Serve proxy <-> replica) + the replica's own steps
    from /metrics (read body, decode+preprocess, batching wait, inference, respond);
  - CPU seconds per process role over the window (replica, proxy, Ray's own processes, the load client, and
    everything else on the machine), since a 2-core box is CPU-bound.

    python benchmarks/serve_load.py /tmp/base/int8 --clients 32 --seconds 60 --per-request 1,8 --rounds 2
    python benchmarks/serve_load.py FOLDER --seconds 5 --rounds 1          # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np

ROLES = {
    "ServeReplica:ovclip:OvclipServer": "replica",
    "ServeReplica:ovclip:MetricsStore": "metrics store",
    "ProxyActor": "serve proxy actor",
    "HAProxyManager": "serve proxy actor",
    "ServeController": "serve controller",
}
STAGES = ("read", "decode", "queue", "inference", "respond")


def fashion_pngs(n: int) -> list[bytes]:
    from PIL import Image

    from ovclip.data.builtin import EVAL_FILE, load_npz

    images, _, _ = load_npz(EVAL_FILE)
    out = []
    for a in images[:n]:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# --- the server -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: str, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = ["ovclip", "serve", folder, "--host", "127.0.0.1", "--port", str(port), *extra]
    print("server  : " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the server did not answer /health in 600 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def metrics(port: int) -> dict[tuple, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _mean(before, after, name, **labels) -> float | None:
    key_s = (f"{name}_sum", tuple(sorted(labels.items())))
    key_n = (f"{name}_count", tuple(sorted(labels.items())))
    n = after.get(key_n, 0) - before.get(key_n, 0)
    return None if n <= 0 else (after.get(key_s, 0) - before.get(key_s, 0)) / n


# --- CPU time by process role ---------------------------------------------------------------------------


def cpu_by_pid() -> dict[int, tuple[str, float]]:
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        try:
            t = p.info["cpu_times"]
            out[p.info["pid"]] = (" ".join(p.info["cmdline"] or []), t.user + t.system)
        except (TypeError, AttributeError):
            continue
    return out


def role(cmdline: str, client_pid: int, pid: int) -> str:
    if pid == client_pid:
        return "load client"
    if cmdline.split(" ", 1)[0].endswith("haproxy"):
        return "haproxy (HTTP)"
    for key, name in ROLES.items():
        if key in cmdline:
            return name
    if "ray" in cmdline and ("site-packages/ray" in cmdline or cmdline.startswith("ray::")):
        return "ray (gcs, raylet, workers)"
    if "ovclip serve" in cmdline or "bin/ovclip serve" in cmdline:
        return "ray (gcs, raylet, workers)"
    return "rest of the machine"


def cpu_split(before, after, client_pid: int) -> dict[str, float]:
    split: dict[str, float] = {}
    for pid, (cmd, t) in after.items():
        if pid in before:  # (a Ray worker's title changes with the method it runs: match by pid)
            r = role(cmd, client_pid, pid)
            split[r] = split.get(r, 0.0) + max(0.0, t - before[pid][1])
    return {k: round(v, 2) for k, v in sorted(split.items(), key=lambda kv: -kv[1])}


# --- the load -------------------------------------------------------------------------------------------


async def _load(url: str, pngs: list[bytes], per_request: int, clients: int, warmup: float, seconds: float):
    import aiohttp

    t_start = time.monotonic()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    records: list[tuple[float, float, int]] = []  # (start, latency, status)
    max_requests = 1_000_000
    counter = {"i": 0}

    async def worker(session: aiohttp.ClientSession, k: int) -> None:
        while time.monotonic() < t_end and counter["i"] < max_requests:
            i = counter["i"] = counter["i"] + 1
            form = aiohttp.FormData()
            for j in range(per_request):
                form.add_field("file", pngs[(i * per_request + j) % len(pngs)], filename=f"{j}.png")
            form.add_field("label_set", "fashion-mnist")
            t0 = time.monotonic()
            try:
                async with session.post(url, data=form) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = -1
            records.append((t0, time.monotonic() - t0, status))

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
        await asyncio.gather(*(worker(s, k) for k in range(clients)))
    return [r for r in records if t_measure <= r[0] and r[0] + r[1] <= t_end], t_measure, t_end


def _client_main(url, pngs, per_request, clients, warmup, seconds, queue) -> None:
    records, t0, t1 = asyncio.run(_load(url, pngs, per_request, clients, warmup, seconds))
    queue.put((records, t0, t1))


def run_load(port: int, pngs, per_request: int, clients: int, warmup: float, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    url = f"http://127.0.0.1:{port}/v1/classify"
    proc = ctx.Process(target=_client_main, args=(url, pngs, per_request, clients, warmup, seconds, queue))
    proc.start()
    time.sleep(warmup)
    m0, c0 = metrics(port), cpu_by_pid()
    records, t0, t1 = queue.get(timeout=warmup + seconds + 300)
    c1 = cpu_by_pid()
    time.sleep(1.5)  # replicas push their counts within a second
    m1 = metrics(port)
    proc.join(60)
    ok = [r for r in records if r[2] == 200]
    lat = np.array([r[1] for r in ok]) * 1e3
    window = t1 - t0
    server = {s: _mean(m0, m1, "ovclip_stage_duration_seconds", stage=s) for s in STAGES}
    handler = _mean(m0, m1, "ovclip_request_duration_seconds", endpoint="/v1/classify")
    client_mean = float(lat.mean()) / 1e3 if len(lat) else None
    batch = _mean(m0, m1, "ovclip_batch_images")
    cpu = cpu_split(c0, c1, proc.pid)
    server_cpu = sum(v for k, v in cpu.items() if k not in ("rest of the machine", "load client"))
    return {
        "images_per_request": per_request,
        "clients": clients,
        "seconds": round(window, 1),
        "requests_ok": len(ok),
        "server_errors": len(records) - len(ok),
        "error_statuses": sorted({r[2] for r in records if r[2] != 200}),
        "images_per_s": round(len(ok) * per_request / window, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "latency_ms_mean": round(float(lat.mean()), 1) if len(lat) else None,
        "replica_ms_mean": None if handler is None else round(handler * 1e3, 2),
        "http_ms_mean": None if handler is None or client_mean is None else round((client_mean - handler) * 1e3, 2),
        "stage_ms_mean": {s: None if v is None else round(v * 1e3, 2) for s, v in server.items()},
        "batch_images_mean": None if batch is None else round(batch, 1),
        "cpu_seconds": cpu,
        "images_per_server_cpu_s": round(len(ok) * per_request / server_cpu, 1) if server_cpu else None,
    }


# --- offline bench --------------------------------------------------------------------------------------


def offline_bench(folder: str, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = ["ovclip", "bench", folder, "--no-accuracy", "--time", str(seconds), "--json", str(out)]
        print("bench   : " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {r["variant"]: float(r["throughput_fps"]) for r in json.loads(out.read_text())}


def offline_cpu(folder: str, pngs: list[bytes], seconds: float) -> dict[str, float]:
    """bench's int8-ee timing in this process (the same `measure`, batch 8, the device's optimal nireq, the
    built-in label set), with the CPU time it took: images per CPU-second does not depend on how much of the
    machine other jobs take, unlike images per second."""
    from PIL import Image

    from ovclip.bench.throughput import measure
    from ovclip.data.label_sets import builtin_label_set
    from ovclip.runtime import Deployment
    from ovclip.serve.pixels import Pixels

    dep = Deployment(folder, hint="throughput")
    labels = builtin_label_set()
    cls = dep.class_embeddings(list(labels.prompt_names), list(labels.templates))
    pixels = Pixels(dep.preprocess_config)([Image.open(io.BytesIO(b)) for b in pngs[:256]])
    batches = [pixels[i : i + 8] for i in range(0, len(pixels), 8)]
    nireq = int(dep.full_depth_compiled().get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    dep.run_vision(batches[0], cls)
    c0 = time.process_time()
    t = measure(lambda b: dep.run_vision(b, cls), batches, nireq=nireq, seconds=seconds)
    cpu = time.process_time() - c0
    return {"images_per_s": t.throughput_fps, "images_per_cpu_s": (t.images + 2 * nireq * 8) / cpu, "nireq": nireq}


def preprocess_cost(folder: str, pngs: list[bytes], repeats: int = 3) -> dict[str, float]:
    """CPU ms per image (one thread, median of `repeats`) of what the server does before inference: decode a
    PNG, then its preprocessing (`ovclip.serve.pixels`), beside the library's `Deployment.preprocess`."""
    from ovclip.runtime import Deployment
    from ovclip.serve.decode import Limits, decode_image
    from ovclip.serve.pixels import Pixels

    dep = Deployment(folder)
    pixels = Pixels(dep.preprocess_config)
    out: dict[str, list[float]] = {"decode": [], "serve_preprocess": [], "library_preprocess": []}
    for _ in range(repeats):
        c0 = time.process_time()
        images = [decode_image(b, "png", Limits()) for b in pngs]
        c1 = time.process_time()
        pixels(images)
        c2 = time.process_time()
        dep.preprocess([im.convert("RGB") for im in images])
        c3 = time.process_time()
        for k, v in zip(out, (c1 - c0, c2 - c1, c3 - c2), strict=True):
            out[k].append(1e3 * v / len(pngs))
    return {f"{k}_cpu_ms_per_image": round(C.median(v), 3) for k, v in out.items()}


# --- main -----------------------------------------------------------------------------------------------


def summarize(runs: list[dict], offline: list[dict[str, float]], offline_cpus: list[dict]) -> dict:
    """Medians over rounds of one setting, its ratio to bench's offline img/s (median over rounds), and the
    same ratio per CPU-second (server processes' CPU vs the offline timing's)."""
    keys = ("images_per_s", "latency_ms_p50", "latency_ms_p99", "images_per_server_cpu_s")
    med = {k: C.median([r[k] for r in runs]) for k in keys}
    per_cpu = C.median([o["images_per_cpu_s"] for o in offline_cpus])
    ee = C.median([next((t for v, t in o.items() if v.endswith("-ee")), 0.0) for o in offline])
    full = C.median([next((t for v, t in o.items() if not v.endswith("-ee")), 0.0) for o in offline])
    return {
        **{k: round(v, 1) for k, v in med.items()},
        "server_errors": sum(r["server_errors"] for r in runs),
        "ratio_to_bench_early_exit": round(med["images_per_s"] / ee, 3) if ee else None,
        "ratio_to_bench_full_depth": round(med["images_per_s"] / full, 3) if full else None,
        "offline_images_per_cpu_s": round(per_cpu, 1),
        "ratio_per_cpu_second": round(med["images_per_server_cpu_s"] / per_cpu, 3),
        "rounds": len(runs),
    }


def print_run(r: dict, cores: int) -> None:
    st = r["stage_ms_mean"]
    steps = ", ".join(f"{k} {v}" for k, v in st.items())
    print(
        f"  {r['images_per_request']:>2} img/request: {r['images_per_s']:7.1f} img/s, p50 {r['latency_ms_p50']} ms, "
        f"p99 {r['latency_ms_p99']} ms, {r['requests_ok']} ok, {r['server_errors']} errors; "
        f"mean batch {r['batch_images_mean']} images"
    )
    print(
        f"     per request (ms): client {r['latency_ms_mean']} = HTTP {r['http_ms_mean']} + replica "
        f"{r['replica_ms_mean']} ({steps})"
    )
    window = r["seconds"] * cores
    cpu = ", ".join(f"{k} {v / window:.0%}" for k, v in r["cpu_seconds"].items())
    print(f"     CPU share of the machine: {cpu}", flush=True)
    print(f"     {r['images_per_server_cpu_s']} images per CPU-second of the server's processes", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds per load run")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--per-request", default="8,1", help="images per request, comma-separated settings")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bench-seconds", type=float, default=10.0)
    ap.add_argument("--server-args", default="", help="extra `ovclip serve` arguments")
    ap.add_argument("--json", type=Path, default=C.RESULTS / "serve_load.json")
    ap.add_argument("--preprocess-only", action="store_true", help="only the CPU cost of decode + preprocessing")
    args = ap.parse_args()
    if args.preprocess_only:
        run = C.Run("serve_preprocess")
        run.data["preprocess_cost"] = cost = preprocess_cost(args.folder, fashion_pngs(512))
        print(json.dumps(cost))
        run.finish(args.json)
        return
    settings = [int(s) for s in args.per_request.split(",")]
    run = C.Run("serve_load", extra_packages=("ray", "fastapi", "starlette", "uvicorn", "aiohttp"))
    pngs = fashion_pngs(2000)
    port = free_port()
    log = args.json.with_suffix(".server.log")
    server = start_server(args.folder, port, args.server_args.split(), log)
    results: dict[int, list[dict]] = {s: [] for s in settings}
    offline: list[dict[str, float]] = []
    offline_cpus: list[dict] = []
    try:
        for k in range(args.rounds):
            order = settings[k % len(settings) :] + settings[: k % len(settings)]
            print(f"round {k + 1}/{args.rounds}", flush=True)
            offline.append(offline_bench(args.folder, args.bench_seconds))
            figures = ", ".join(f"{v} {t:.1f} img/s" for v, t in offline[-1].items())
            print(f"  ovclip bench (offline, batch 8): {figures}")
            offline_cpus.append(offline_cpu(args.folder, pngs, args.bench_seconds))
            o = offline_cpus[-1]
            print(
                f"  offline in-process (int8-ee as bench): {o['images_per_s']:.1f} img/s, "
                f"{o['images_per_cpu_s']:.1f} img per CPU-second",
                flush=True,
            )
            for s in order:
                results[s].append(run_load(port, pngs, s, args.clients, args.warmup, args.seconds))
                print_run(results[s][-1], C.cores())
    finally:
        stop_server(server)
    run.data.update(
        folder=args.folder,
        clients=args.clients,
        seconds=args.seconds,
        offline=offline,
        offline_cpu=offline_cpus,
        runs={str(s): rs for s, rs in results.items()},
        summary={str(s): summarize(rs, offline, offline_cpus) for s, rs in results.items()},
    )
    print("\nsummary (medians over rounds):")
    for s, summ in run.data["summary"].items():
        print(f"  {s:>2} img/request: {json.dumps(summ)}")
    run.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
