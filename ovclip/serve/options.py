"""`ServeOptions`: everything a server replica needs to know, as plain data (Ray ships it to each replica)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ovclip.data.label_sets import LabelSet
from ovclip.errors import OvclipError
from ovclip.serve.decode import Limits


@dataclass(frozen=True)
class ServeOptions:
    folder: str  # deployment folder (absolute; every node that runs a replica must see it at this path)
    device: str = "CPU"
    hint: str = "throughput"
    replicas: int = 1
    cpus_per_replica: float = 1.0  # Ray's scheduling unit; OpenVINO uses the cores it finds
    max_batch_images: int = 32  # dynamic batching: images per inference call
    batch_wait_s: float = 0.005  # longest wait for a batch to fill
    max_ongoing_requests: int = 64  # per replica; more wait in Ray Serve's queue
    label_sets: tuple[LabelSet, ...] = ()  # saved label sets, besides the built-in one
    limits: Limits = field(default_factory=Limits)
    model_name: str = "ovclip"  # KServe v2 models: <name>-vision, <name>-vision-classify, <name>-text
    health_check_period_s: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", str(Path(self.folder).absolute()))
        checks = [
            (self.replicas >= 1, "replicas", "at least 1"),
            (self.cpus_per_replica >= 0, "cpus_per_replica", "0 or more"),
            (self.max_batch_images >= 1, "max_batch_images", "at least 1"),
            (0 <= self.batch_wait_s <= 1, "batch_wait_s", "between 0 and 1 second"),
            (self.max_ongoing_requests >= 1, "max_ongoing_requests", "at least 1"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise OvclipError(f"{name}={getattr(self, name)!r}: must be {what}", params=name)
        names = [ls.name for ls in self.label_sets]
        if len(set(names)) != len(names) or None in names:
            raise OvclipError("label_sets: every saved label set needs its own name", params="label_sets")
