"""Prometheus metrics of the server: each replica counts into its own prometheus_client registry; replicas
push snapshots of it to one store, and `GET /metrics` renders the sum over every replica that ever reported
(counters and histograms add up; a replaced replica's last snapshot keeps counting, so totals never go back).

    ovclip_requests_total{endpoint,code}             requests answered
    ovclip_errors_total{endpoint,kind}               failed requests by kind (not_an_image, too_large, ...)
    ovclip_request_duration_seconds{endpoint}        time in the replica, request in to response out
    ovclip_stage_duration_seconds{stage}             per request: read, decode, queue (batching wait),
                                                     inference, respond
    ovclip_images_total{endpoint}                    images embedded or classified
    ovclip_exit_block                                histogram of the block each image left after
    ovclip_batch_images / ovclip_batch_inference_seconds   per inference batch
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("read", "decode", "queue", "inference", "respond")

Snapshot = list[dict]  # [{"name", "type", "doc", "samples": [[sample name, [[label, value], ...], value], ...]}]


class ReplicaMetrics:
    """The metrics one replica records."""

    def __init__(self, num_layers: int):
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("ovclip_requests", "Requests answered", ["endpoint", "code"], registry=r)
        self.errors = Counter("ovclip_errors", "Failed requests by kind", ["endpoint", "kind"], registry=r)
        self.latency = Histogram(
            "ovclip_request_duration_seconds",
            "Time in the replica from request to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "ovclip_stage_duration_seconds",
            "Per request, time in each step: read body, decode+preprocess, queue (batching wait), inference, respond",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("ovclip_images", "Images embedded or classified", ["endpoint"], registry=r)
        self.exits = Histogram(
            "ovclip_exit_block",
            f"Block each image left the vision tower after ({num_layers} = full depth)",
            buckets=tuple(range(1, num_layers + 1)),
            registry=r,
        )
        self.batch_images = Histogram(
            "ovclip_batch_images", "Images per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "ovclip_batch_inference_seconds", "Inference time per batch", buckets=LATENCY_BUCKETS, registry=r
        )

    def snapshot(self) -> Snapshot:
        return snapshot(self.registry)


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """The registry's families as plain data (no `_created` timestamps: they do not add up)."""
    out = []
    for fam in registry.collect():
        samples = [
            [s.name, sorted(s.labels.items()), float(s.value)] for s in fam.samples if not s.name.endswith("_created")
        ]
        out.append({"name": fam.name, "type": fam.type, "doc": fam.documentation, "samples": samples})
    return out


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Sum the samples of several replicas' snapshots, family by family, in first-seen order."""
    families: dict[str, dict] = {}
    for snap in snapshots:
        for fam in snap:
            into = families.setdefault(fam["name"], {**fam, "samples": {}})
            for name, labels, value in fam["samples"]:
                key = (name, tuple(tuple(kv) for kv in labels))
                into["samples"][key] = into["samples"].get(key, 0.0) + value
    return [
        {**f, "samples": [[n, [list(kv) for kv in lab], v] for (n, lab), v in f["samples"].items()]}
        for f in families.values()
    ]


class _Fixed:
    def __init__(self, families: Snapshot):
        self.families = families

    def collect(self):
        for fam in self.families:
            m = Metric(fam["name"], fam["doc"], fam["type"])
            for name, labels, value in fam["samples"]:
                m.add_sample(name, dict(labels), value)
            yield m


def render(families: Snapshot, replicas: int) -> bytes:
    """Prometheus text exposition of merged families, plus how many replicas they come from."""
    count = {
        "name": "ovclip_replicas_reported",
        "type": "gauge",
        "doc": "Replicas whose counts are in these totals (replaced ones included)",
        "samples": [["ovclip_replicas_reported", [], float(replicas)]],
    }
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*families, count]))
    return generate_latest(registry)


class MetricsStore:
    """Holds the latest snapshot of every replica (run as a one-replica Serve deployment)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}

    def push(self, replica: str, snap: Snapshot) -> None:
        self.snapshots[replica] = snap

    def merged(self) -> tuple[Snapshot, int]:
        return merge(self.snapshots.values()), len(self.snapshots)
