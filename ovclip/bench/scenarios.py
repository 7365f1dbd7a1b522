"""The MLPerf Inference scenarios `ovclip bench` times (names as MLPerf uses them).

offline        throughput: batches of `batch` images, the device's optimal number of requests in flight
               (OpenVINO's benchmark_app method); THROUGHPUT hint.
single-stream  one image per query, the next query sent when the last one returned; latency per query
               (mean, p90, p99); LATENCY hint. A sample that exits early simply returns early.
multi-stream   8 images per query, one query at a time; latency per query (p99 is MLPerf's figure).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovclip.errors import OvclipError


@dataclass(frozen=True)
class Scenario:
    name: str
    samples_per_query: int | None  # None: the bench's batch (offline)
    concurrent: bool  # several queries in flight (offline) or one at a time
    hint: str  # the OpenVINO performance hint used unless one is asked for
    metric: str  # the figure MLPerf reports for it


SCENARIOS = {
    "offline": Scenario("offline", None, True, "throughput", "throughput_fps"),
    "single-stream": Scenario("single-stream", 1, False, "latency", "latency_ms.p90"),
    "multi-stream": Scenario("multi-stream", 8, False, "latency", "latency_ms.p99"),
}


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise OvclipError(f"scenario={name!r}: choose {', '.join(SCENARIOS)}", params="scenario") from None
