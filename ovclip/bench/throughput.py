"""Throughput and latency the way OpenVINO's benchmark_app measures them.

`nireq` workers run at once (benchmark_app: that many infer requests in flight; here, threads that each
own their infer requests, since a staged, early-exiting pipeline is more than one request). After a
warm-up that is not counted, they run for `seconds`; throughput is images done / wall time between the
first counted start and the last end, and latency is each batch's own time (mean, median, p90, p99). With
`nireq=1` one batch runs at a time: the stream scenarios (`ovclip.bench.scenarios`), latency per query.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ovclip.errors import OvclipError


@dataclass
class Timing:
    throughput_fps: float
    latency_ms: dict[str, float]
    batches: int
    images: int
    seconds: float
    nireq: int

    def as_dict(self) -> dict:
        return {
            "throughput_fps": self.throughput_fps,
            "latency_ms": self.latency_ms,
            "iterations": self.batches,
            "images_timed": self.images,
            "seconds": self.seconds,
            "nireq": self.nireq,
        }


def measure(
    run: Callable[[np.ndarray], object],
    batches: Sequence[np.ndarray],
    *,
    nireq: int,
    seconds: float,
    warmup_batches: int = 2,
    on_tick: Callable[[float], None] | None = None,
) -> Timing:
    """Time `run(batch)` over `batches` (cycled) from `nireq` threads for `seconds` after warm-up."""
    if not batches:
        raise ValueError("nothing to time")
    for i in range(max(1, warmup_batches)):  # compile and warm every worker's requests
        ws = [threading.Thread(target=run, args=(batches[(i + j) % len(batches)],)) for j in range(nireq)]
        for w in ws:
            w.start()
        for w in ws:
            w.join()
    lock = threading.Lock()
    counter = {"next": 0}
    records: list[tuple[float, float, int]] = []
    errors: list[BaseException] = []
    start = time.perf_counter()
    deadline = start + seconds

    def worker() -> None:
        while True:
            with lock:
                k = counter["next"]
                counter["next"] += 1
            if time.perf_counter() >= deadline:
                return
            b = batches[k % len(batches)]
            t0 = time.perf_counter()
            try:
                run(b)
            except BaseException as e:  # surfaced to the caller after the run
                errors.append(e)
                return
            t1 = time.perf_counter()
            with lock:
                records.append((t0, t1, len(b)))

    threads = [threading.Thread(target=worker) for _ in range(nireq)]
    for t in threads:
        t.start()
    if on_tick is not None:
        while any(t.is_alive() for t in threads):
            on_tick(min(1.0, (time.perf_counter() - start) / seconds))
            time.sleep(0.1)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if not records:
        raise OvclipError(
            f"no batch finished within seconds={seconds} (a batch takes longer); raise `seconds`", params="seconds"
        )
    t_first = min(r[0] for r in records)
    t_last = max(r[1] for r in records)
    lat = np.array([(r[1] - r[0]) * 1000 for r in records])
    images = sum(r[2] for r in records)
    wall = t_last - t_first
    return Timing(
        throughput_fps=images / wall,
        latency_ms={
            "mean": float(lat.mean()),
            "median": float(np.median(lat)),
            "p90": float(np.percentile(lat, 90)),
            "p99": float(np.percentile(lat, 99)),
            "min": float(lat.min()),
            "max": float(lat.max()),
        },
        batches=len(records),
        images=images,
        seconds=wall,
        nireq=nireq,
    )
