"""`ovclip bench`: one record per (folder, variant, device): speed, accuracy, exits, FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from ovclip.bench.metrics import exit_histogram, rescue_quadrants, topk_accuracy
from ovclip.bench.throughput import measure
from ovclip.errors import OvclipError
from ovclip.folder import read_manifest
from ovclip.policy.flops import full_depth_flops, mean_flops
from ovclip.progress import Progress, advance, note
from ovclip.runtime import Deployment
from ovclip.runtime.device import supports_bf16

RANDOM_REASON = "random weights: accuracy is meaningless, speed only"


@dataclass(frozen=True)
class BenchSettings:
    device: str = "CPU"
    hint: str = "throughput"
    batch: int = 8
    nireq: int | None = None  # None: the device's optimal number of infer requests
    seconds: float = 10.0
    precision: str = "auto"  # auto: fp32 folders as f32 (+ bf16 where the CPU has it); f32; bf16
    pool: int = 512  # real images cycled through in the timed run
    accuracy: bool = True
    runtime: str = "auto"  # Deployment's runtime: auto, graph (one OpenVINO graph per policy), stages

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise OvclipError(f"batch={self.batch}: must be at least 1", params="batch")
        if self.seconds <= 0:
            raise OvclipError(f"seconds={self.seconds}: must be a positive number of seconds", params="seconds")
        if self.nireq is not None and self.nireq < 1:
            raise OvclipError(f"nireq={self.nireq}: must be at least 1", params="nireq")
        if self.precision not in ("auto", "f32", "bf16"):
            raise OvclipError(f"precision={self.precision!r}: choose auto, f32 or bf16", params="precision")


def variants(manifest, settings: BenchSettings) -> list[tuple[str, str | None, bool]]:
    """(variant name, CPU inference precision to ask for, early exit on) for one folder."""
    cpu = settings.device.upper().startswith("CPU")
    kind = manifest.variant
    if kind in ("fp32", "fp16"):
        if not cpu:
            return [(kind, None, False)]
        if settings.precision == "auto":
            out = [(kind, "f32", False)]
            if supports_bf16(settings.device):
                out.append(("bf16", "bf16", False))
            return out
        return [(kind if settings.precision == "f32" else "bf16", settings.precision, False)]
    precision = None if settings.precision == "auto" or not cpu else settings.precision
    out = [(kind, precision, False)]
    if manifest.get("exit_policy"):
        out.append((f"{kind}-ee", precision, True))
    return out


def optimal_nireq(dep: Deployment) -> int:
    try:
        return int(dep.full_depth_compiled().get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    except RuntimeError:
        return 1


def bench_folder(
    folder: str | Path,
    settings: BenchSettings,
    dataset=None,
    templates: list[str] | None = None,
    progress: Progress | None = None,
) -> list[dict]:
    """One record per variant of `folder` (see `variants`): speed, and accuracy/exits/FLOPs on `dataset`."""
    manifest = read_manifest(folder)
    records = [
        _bench_variant(folder, manifest, settings, dataset, templates, variant, progress)
        for variant in variants(manifest, settings)
    ]
    return _with_rescue(records)


def _bench_variant(folder, manifest, settings: BenchSettings, dataset, templates, variant, progress) -> dict:
    name, precision, ee = variant
    dep = Deployment(
        folder, settings.device, hint=settings.hint, inference_precision=precision, runtime=settings.runtime
    )
    rec = _base_record(folder, manifest, settings, dep, name)
    class_emb = None
    if dataset is not None and manifest.trained:
        class_emb = dep.class_embeddings(dataset.prompt_names, templates)
        if settings.accuracy:
            rec.update(_accuracy_fields(dep, dataset, class_emb, ee, settings, name, progress))
    if ee and class_emb is None and dep.policy.needs_labels:
        raise OvclipError(
            f"{folder}: timing early exit needs labelled images (`dataset`): the exit rule uses class scores",
            params="dataset",
        )
    pool = timing_pool(dep, dataset, settings, manifest.trained)
    timing = _time_variant(dep, pool, rec["nireq"], settings, ee, class_emb, name, progress)
    rec.update(timing.as_dict())
    note(progress, f"{Path(folder).name} {name}: {timing.throughput_fps:.1f} img/s")
    return rec


def _base_record(folder, manifest, settings: BenchSettings, dep: Deployment, name: str) -> dict:
    """A record with what is known before measuring: the folder, the variant, how it runs, full-depth FLOPs."""
    trained = manifest.trained
    return {
        "model": str(Path(folder)),
        "source": manifest["source"].get("description"),
        "variant": name,
        "device": settings.device,
        "hint": settings.hint,
        "batch": settings.batch,
        "nireq": settings.nireq or optimal_nireq(dep),
        "inference_precision": dep.executed_precision(),
        "runtime": dep.runtime,
        "openvino_version": ov.get_version(),
        "trained": trained,
        "n_images": 0,
        "top1": None,
        "top5": None,
        "accuracy_note": None if trained else RANDOM_REASON,
        "exit_histogram": None,
        "flops_per_image": full_depth_flops(manifest.vision, int(manifest["embedding_dim"])),
        "flops_saving": 0.0,
    }


def _accuracy_fields(dep: Deployment, dataset, class_emb, ee: bool, settings: BenchSettings, name: str, progress):
    """Top-1/top-5 over `dataset`; with early exit also the exit histogram, mean FLOPs and the Pareto points."""
    acc = accuracy_pass(
        dep,
        dataset,
        class_emb,
        ee,
        settings.batch * 8,
        tick=progress and (lambda f: advance(progress, f"{name} accuracy", f)),
    )
    fields: dict = {"n_images": acc.n, "top1": acc.top1, "top5": acc.top5, "_correct": acc.correct}
    if ee:
        vision, full = dep.vision, full_depth_flops(dep.vision, int(dep.manifest["embedding_dim"]))
        fields["exit_histogram"] = exit_histogram(acc.exit_layer, dep.policy.exits, vision["num_layers"])
        fields["flops_per_image"] = acc.mean_flops
        fields["flops_saving"] = 1 - acc.mean_flops / full
        fields["pareto"] = pareto_on_data(dep, dataset, class_emb, settings.batch * 8)
    return fields


def _time_variant(dep, pool, nireq: int, settings: BenchSettings, ee: bool, class_emb, name: str, progress):
    def run(batch: np.ndarray) -> None:
        dep.run_vision(batch, class_emb, early_exit=ee)

    return measure(
        run,
        pool,
        nireq=nireq,
        seconds=settings.seconds,
        on_tick=progress and (lambda f: advance(progress, f"{name} timing", f)),
    )


def _with_rescue(records: list[dict]) -> list[dict]:
    """Rescue quadrants of each early-exit record against the folder's full-depth record; drop the per-image
    correctness they were computed from."""
    full = next((r for r in records if "_correct" in r and not r["variant"].endswith("-ee")), None)
    for r in records:
        if full is not None and "_correct" in r and r["variant"].endswith("-ee"):
            r["rescue"] = rescue_quadrants(r["_correct"], full["_correct"])
    for r in records:
        r.pop("_correct", None)
    return records


def timing_pool(dep: Deployment, dataset, settings: BenchSettings, trained: bool) -> list[np.ndarray]:
    """Batches timed: real evaluation images when there are any, else seeded random tensors."""
    b = settings.batch
    if dataset is not None and len(dataset):
        n = min(len(dataset), max(settings.pool, b))
        idx = np.arange(n)
        px = dataset.pixels(idx, dep.preprocess_config)
        return [px[i : i + b] for i in range(0, n - b + 1, b)] or [px]
    s = dep.vision["image_size"]
    rng = np.random.default_rng(0)
    return [rng.standard_normal((b, 3, s, s), dtype=np.float32) for _ in range(4)]


@dataclass
class AccuracyResult:
    n: int
    top1: float
    top5: float
    correct: np.ndarray  # (N,) bool, top-1 right
    exit_layer: np.ndarray  # (N,)
    mean_flops: float


def accuracy_pass(dep: Deployment, dataset, class_emb: np.ndarray, ee: bool, chunk: int, tick=None) -> AccuracyResult:
    """Zero-shot accuracy over the whole set, streamed in chunks (pixels are not all held at once)."""
    labels = dataset.labels
    scores, exit_layer = [], []
    for i in range(0, len(dataset), chunk):
        idx = np.arange(i, min(i + chunk, len(dataset)))
        out = dep.run_vision(dataset.pixels(idx, dep.preprocess_config), class_emb, early_exit=ee)
        scores.append(out.scores)
        exit_layer.append(out.exit_layer)
        if tick:
            tick(min(1.0, (i + chunk) / len(dataset)))
    s = np.concatenate(scores)
    el = np.concatenate(exit_layer)
    exits = dep.policy.exits if (ee and dep.policy) else []
    return AccuracyResult(
        n=len(labels),
        top1=topk_accuracy(s, labels, 1),
        top5=topk_accuracy(s, labels, 5),
        correct=s.argmax(1) == labels,
        exit_layer=el,
        mean_flops=mean_flops(dep.vision, int(dep.manifest["embedding_dim"]), el, exits, s.shape[1]),
    )


def pareto_on_data(dep: Deployment, dataset, class_emb: np.ndarray, chunk: int) -> list[dict]:
    """Accuracy vs FLOPs saving on this data for the thresholds the policy stored per budget, for the
    learned gate and the confidence-only baseline (one traced pass: every head on every image)."""
    from ovclip.policy.cascade import evaluate
    from ovclip.policy.trace import trace_for_rule
    from ovclip.runtime.deployment import trace_vision

    policy = dep.policy
    rows = policy.info.get("pareto") or []
    if not rows:
        return []
    heads: dict[int, list] = {L: [] for L in policy.exits}
    finals = []
    for i in range(0, len(dataset), chunk):
        t = trace_vision(dep, dataset.pixels(np.arange(i, min(i + chunk, len(dataset))), dep.preprocess_config), policy)
        for L, v in t["heads"].items():
            heads[L].append(v)
        finals.append(t["final"])
    merged = {L: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for L, v in heads.items()}
    final = np.concatenate(finals)
    emb_dim = int(dep.manifest["embedding_dim"])
    out = []
    traces = {
        rule: trace_for_rule(
            policy, rule, merged, final, class_emb, dataset.labels, dep.logit_scale, dep.vision, emb_dim
        )
        for rule in ("gate", "confidence")
    }
    full = traces["gate"].flops[dep.num_layers]
    for row in rows:
        if any(row[r].get("calibration_flops_saving", 1.0) < 1 - row["budget"] - 1e-9 for r in traces):
            continue  # no thresholds met this budget on the calibration data
        point = {"budget": row["budget"]}
        for rule, tr in traces.items():
            t = {int(k): v for k, v in row[rule]["thresholds"].items()}
            acc, fl, _ = evaluate(tr, t)
            point[rule] = {
                "top1": acc,
                "flops_saving": 1 - fl / full,
                "calibration_top1": row[rule]["calibration_top1"],
            }
        out.append(point)
    return out
