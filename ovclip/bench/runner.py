"""`ovclip bench`, one folder at a time: the settings, and each variant prepared for timing — compiled (compile
time and first inference recorded), measured once over the data set (accuracy, exits, FLOPs, embeddings),
with the batches it will be timed on. `ovclip.bench.suite` times every prepared variant of a run in rotating
rounds; `bench_folder` does it for one folder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov

from ovclip.bench.offline_batch import BatchChoice, rebatch, tune_batch
from ovclip.bench.passes import AccuracyResult, accuracy_pass, pareto_on_data, policy_used
from ovclip.bench.scenarios import scenario as get_scenario
from ovclip.bench.throughput import Timing, measure
from ovclip.bench.timing import time_and_report
from ovclip.bench.variants import Variant, is_deployed, variants
from ovclip.errors import OvclipError
from ovclip.folder import read_manifest
from ovclip.folder.deployed import deployed_batch
from ovclip.policy.flops import full_depth_flops, mean_flops
from ovclip.progress import Progress, advance, note
from ovclip.runtime import Deployment
from ovclip.runtime.device import cache_dir_for, device_name

__all__ = [
    "AccuracyResult",
    "BenchSettings",
    "Prepared",
    "accuracy_pass",
    "bench_folder",
    "choose_offline_batch",
    "optimal_nireq",
    "prepare_folder",
    "timing_pool",
]

RANDOM_REASON = "random weights: accuracy is meaningless, speed only"
UNLABELED_REASON = "unlabeled images: zero-shot accuracy needs class labels (see fidelity for what was measured)"
NO_ACCURACY_REASON = "not measured (accuracy switched off)"
NO_DATA_REASON = "not measured (no data set given)"


@dataclass(frozen=True)
class BenchSettings:
    device: str = "CPU"
    hint: str | None = None  # None: the scenario's (offline: throughput; the stream scenarios: latency)
    batch: int | None = None  # images per call, offline (None: per folder, recorded or measured); fixed by the others
    nireq: int | None = None  # offline: None = the device's optimal number of infer requests
    seconds: float = 5.0  # timed seconds per record and round
    precision: str = "auto"  # auto: fp32 folders as f32 (+ bf16 where the CPU has it); f32; bf16
    pool: int = 512  # real images cycled through in the timed run
    accuracy: bool = True
    runtime: str = "auto"  # Deployment's runtime: auto, graph (one OpenVINO graph per policy), stages
    rounds: int = 3  # rotating rounds every record is timed in
    scenario: str = "offline"  # offline, single-stream, multi-stream (ovclip.bench.scenarios)
    reference: str | Path | None = None  # FP32 folder for embedding fidelity (None: an fp32 folder benched)
    startup: bool = False  # also time compile + first inference in fresh processes, cache off/cold/warm
    cache_dir: str | Path | None = "default"  # OpenVINO model cache of the timed deployments

    def __post_init__(self) -> None:
        spec = get_scenario(self.scenario)
        if self.batch is not None and self.batch < 1:
            raise OvclipError(f"batch={self.batch}: must be at least 1", params="batch")
        if self.batch is not None and spec.samples_per_query not in (None, self.batch):
            raise OvclipError(
                f"batch={self.batch}: the {spec.name} scenario sends {spec.samples_per_query} image(s) per query; "
                "leave batch unset",
                params="batch",
            )
        if self.nireq is not None and (self.nireq < 1 or (self.nireq > 1 and not spec.concurrent)):
            raise OvclipError(
                f"nireq={self.nireq}: must be at least 1, and 1 in the {spec.name} scenario", params="nireq"
            )
        if self.seconds <= 0:
            raise OvclipError(f"seconds={self.seconds}: must be a positive number of seconds", params="seconds")
        if self.rounds < 1:
            raise OvclipError(f"rounds={self.rounds}: must be at least 1", params="rounds")
        if self.precision not in ("auto", "f32", "bf16"):
            raise OvclipError(f"precision={self.precision!r}: choose auto, f32 or bf16", params="precision")

    @property
    def query_size(self) -> int:
        """Images per inference call: the scenario's, or `batch` offline (8 until a folder's batch is chosen)."""
        return get_scenario(self.scenario).samples_per_query or self.batch or 8

    @property
    def batch_to_choose(self) -> bool:
        """Offline without a given batch: each folder's offline batch is chosen (`choose_offline_batch`)."""
        return self.batch is None and get_scenario(self.scenario).samples_per_query is None

    @property
    def performance_hint(self) -> str:
        return self.hint or get_scenario(self.scenario).hint


@dataclass
class Prepared:
    """One variant of one folder, compiled and measured, ready to be timed."""

    record: dict
    dep: Deployment
    variant: Variant
    class_emb: np.ndarray | None
    pool: list[np.ndarray]
    nireq: int
    measured: AccuracyResult | None = None  # the pass over the data set as the variant runs
    label_free: AccuracyResult | None = None  # the pass without class embeddings (retrieval), when it differs
    neighbours: dict = field(default_factory=dict)  # nearest-neighbour lists by pass name, computed once

    @property
    def policy(self):
        """The exit policy this variant runs (None: full depth), `ovclip.bench.passes.policy_used`."""
        return policy_used(self.dep, self.class_emb, self.variant.early_exit)

    def run(self, batch: np.ndarray):
        policy = self.policy
        return self.dep.run_vision(batch, self.class_emb, early_exit=policy is not None, policy=policy)

    def time_once(self, seconds: float, on_tick=None) -> Timing:
        return measure(self.run, self.pool, nireq=self.nireq, seconds=seconds, on_tick=on_tick)


def optimal_nireq(dep: Deployment) -> int:
    try:
        return int(dep.full_depth_compiled().get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    except RuntimeError:
        return 1


def timing_pool(dep: Deployment, dataset, settings: BenchSettings, cache: dict | None = None) -> list[np.ndarray]:
    """Batches timed (`settings.query_size` images each): real images when there are any, else seeded random
    tensors. `cache` shares one pool between the variants that preprocess alike."""
    key = (repr(dep.preprocess_config), dep.vision["image_size"])
    if cache is not None and key in cache:
        return cache[key]
    pool = _pool(dep, dataset, settings)
    if cache is not None:
        cache[key] = pool
    return pool


def _pool(dep: Deployment, dataset, settings: BenchSettings) -> list[np.ndarray]:
    b = settings.query_size
    if dataset is not None and len(dataset):
        n = min(len(dataset), max(settings.pool, b))
        px = dataset.pixels(np.arange(n), dep.preprocess_config)
        return rebatch([px], b)
    s = dep.vision["image_size"]
    rng = np.random.default_rng(0)
    return [rng.standard_normal((b, 3, s, s), dtype=np.float32) for _ in range(max(4, min(settings.pool, 64) // b))]


def prepare_folder(
    folder: str | Path,
    settings: BenchSettings,
    dataset=None,
    templates=None,
    progress: Progress | None = None,
    pools: dict | None = None,
) -> list[Prepared]:
    """Every variant of `folder` (`ovclip.bench.variants`) prepared for timing; an early-exit variant that cannot
    run on this data (a class-score rule, no labels, no label-free rule) is left out with a note. `pools`:
    timing pools shared across folders (`timing_pool`)."""
    manifest = read_manifest(folder)
    pools = {} if pools is None else pools
    out = []
    for v in variants(manifest, settings.device, settings.precision):
        p = _prepare_variant(folder, manifest, settings, dataset, templates, v, progress, pools)
        if p is not None:
            out.append(p)
    if out and settings.batch_to_choose:
        choose_offline_batch(out, manifest, settings, progress)
    return out


def choose_offline_batch(prepared: list[Prepared], manifest, settings: BenchSettings, progress=None) -> BatchChoice:
    """One offline batch for every variant of a folder: the one its record says was fastest on this device, else
    measured now on its deployed variant (`ovclip.bench.offline_batch`). Each variant's pool is re-cut to it."""
    name = device_name(settings.device)
    if manifest.get("static_batch") is not None:
        choice = BatchChoice(int(manifest["static_batch"]), "the folder's static batch", {})
    elif (recorded := deployed_batch(manifest, settings.device, name)) is not None:
        choice = BatchChoice(recorded, f"recorded by `ovclip deploy` on this device ({name})", {})
    else:
        p = next((p for p in prepared if p.record["deployed"]), prepared[-1])
        folder = Path(p.record["model"]).name
        choice = tune_batch(
            p.run,
            p.pool,
            nireq=p.nireq,
            seconds=min(settings.seconds, 2.0),
            rounds=min(max(settings.rounds, 2), 3),
            on_result=lambda r, b, fps: note(progress, f"{folder} {p.variant.name}: batch {b}: {fps:.1f} img/s"),
        )
        note(progress, f"{folder}: offline batch {choice.batch} (fastest for {p.variant.name} on {settings.device})")
    for q in prepared:
        q.pool = rebatch(q.pool, choice.batch)
        q.record["batch"] = len(q.pool[0])  # fewer images in the pool than the batch: all of them in one call
        q.record["batch_choice"] = choice.as_dict()
    return choice


def _prepare_variant(folder, manifest, settings: BenchSettings, dataset, templates, v: Variant, progress, pools):
    dep = Deployment(
        folder,
        settings.device,
        hint=settings.performance_hint,
        inference_precision=v.precision,
        runtime=settings.runtime,
        cache_dir=settings.cache_dir,
    )
    labelled = dataset is not None and getattr(dataset, "labels", None) is not None
    class_emb = dep.class_embeddings(dataset.prompt_names, templates) if labelled and manifest.trained else None
    policy = policy_used(dep, class_emb, v.early_exit)
    if v.early_exit and policy is None:
        note(progress, f"{folder}: {v.name} left out: its exit rule needs class scores and there are no labels")
        return None
    pool = timing_pool(dep, dataset, settings, pools)
    t0 = time.perf_counter()
    dep.compile_vision(policy, len(pool[0]), 0 if class_emb is None else len(class_emb))
    t1 = time.perf_counter()
    p = Prepared({}, dep, v, class_emb, pool, 1)
    p.run(pool[0])
    t2 = time.perf_counter()
    p.nireq = settings.nireq or (optimal_nireq(dep) if get_scenario(settings.scenario).concurrent else 1)
    p.record = rec = _base_record(folder, manifest, settings, dep, v, p.nireq)
    rec["compile_s"], rec["first_inference_ms"] = t1 - t0, 1000 * (t2 - t1)
    if v.early_exit:
        _timed_exits(p, policy)
    if settings.accuracy and dataset is not None and manifest.trained:
        _measure_pass(p, dataset, settings, progress)
    rec["accuracy_note"] = _accuracy_note(rec, manifest, settings, dataset)
    return p


def _base_record(folder, manifest, settings: BenchSettings, dep: Deployment, v: Variant, nireq: int) -> dict:
    """A record with what is known before measuring: the folder, the variant, how it runs, full-depth FLOPs."""
    executed = dep.executed_precision()
    return {
        "model": str(Path(folder)),
        "source": manifest["source"].get("description"),
        "variant": v.name,
        "early_exit": v.early_exit,
        "deployed": is_deployed(manifest, settings.device, v, executed),
        "device": settings.device,
        "scenario": settings.scenario,
        "hint": settings.performance_hint,
        "batch": settings.query_size,
        "nireq": nireq,
        "inference_precision": executed,
        "runtime": dep.runtime,
        "model_cache": None if (c := cache_dir_for(settings.device, settings.cache_dir)) is None else str(c),
        "openvino_version": ov.get_version(),
        "trained": manifest.trained,
        "n_images": 0,
        "top1": None,
        "top5": None,
        "exit_rule": None,
        "exit_histogram": None,
        "flops_per_image": full_depth_flops(manifest.vision, int(manifest["embedding_dim"])),
        "flops_saving": 0.0,
    }


def _timed_exits(p: Prepared, policy) -> None:
    """Exits and FLOPs on the very images timed (the pool), which may differ from the whole set's: the record's
    figures until a pass over the data set replaces them ("flops_measured_on" says which)."""
    el = np.concatenate([p.run(b).exit_layer for b in p.pool])
    classes = 0 if p.class_emb is None else len(p.class_emb)
    emb = int(p.dep.manifest["embedding_dim"])
    flops = mean_flops(p.dep.vision, emb, el, policy.exits, classes)
    rec = p.record
    rec["flops_saving_timed"] = 1.0 - flops / full_depth_flops(p.dep.vision, emb)
    rec["exit_histogram"] = {str(L): int(np.sum(el == L)) for L in [*policy.exits, p.dep.num_layers]}
    rec.update(exit_rule=policy.rule, flops_per_image=flops, flops_saving=rec["flops_saving_timed"])
    rec["flops_measured_on"] = f"the {len(el)} timed images"


def _measure_pass(p: Prepared, dataset, settings: BenchSettings, progress) -> None:
    """Top-1/top-5 (labelled sets), embeddings, and with early exit the exit histogram, mean FLOPs and (class
    rule) the Pareto points, over the whole set."""
    name, dep = p.variant.name, p.dep
    res = accuracy_pass(
        dep,
        dataset,
        p.class_emb,
        p.variant.early_exit,
        settings.query_size * 8 if settings.query_size > 1 else 64,
        tick=progress and (lambda f: advance(progress, f"{name} accuracy", f)),
    )
    p.measured = res
    rec = p.record
    rec.update(n_images=res.n, top1=res.top1, top5=res.top5, exit_rule=res.rule)
    if p.variant.early_exit:
        policy = p.policy
        rec["exit_histogram"] = {str(L): int(np.sum(res.exit_layer == L)) for L in [*policy.exits, dep.num_layers]}
        rec["flops_per_image"] = res.mean_flops
        rec["flops_saving"] = res.flops_saving
        rec["flops_measured_on"] = f"the data set ({res.n} images)"
        if policy is dep.policy and p.class_emb is not None and res.top1 is not None:  # the class rule's points
            rec["pareto"] = pareto_on_data(dep, dataset, p.class_emb, settings.query_size * 8)


def _accuracy_note(rec: dict, manifest, settings: BenchSettings, dataset) -> str | None:
    if rec["top1"] is not None:
        return None
    if not manifest.trained:
        return RANDOM_REASON
    if dataset is None:
        return NO_DATA_REASON
    if not settings.accuracy:
        return NO_ACCURACY_REASON
    return UNLABELED_REASON


def bench_folder(
    folder: str | Path,
    settings: BenchSettings,
    dataset=None,
    templates: list[str] | None = None,
    progress: Progress | None = None,
) -> list[dict]:
    """One record per variant of `folder`, timed in rotating rounds (`ovclip.bench.timing.time_and_report`)."""

    return time_and_report(prepare_folder(folder, settings, dataset, templates, progress), settings, progress)
