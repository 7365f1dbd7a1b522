"""What one record of a bench run is measured against: its full-depth twin (speed ratios taken within each
round, latency saving, rescue quadrants) and the FP32 full-depth embeddings (fidelity)."""

from __future__ import annotations

from ovclip.bench.fidelity import NEIGHBOURS, embedding_fidelity, nearest_neighbours
from ovclip.bench.metrics import rescue_quadrants
from ovclip.bench.passes import accuracy_pass
from ovclip.bench.retrieval import neighbours_of
from ovclip.bench.rounds import ratio_within_rounds, summary
from ovclip.errors import OvclipError
from ovclip.progress import Progress, note

NO_REFERENCE = "no FP32 folder among those benched: pass an FP32 folder too, or reference=<fp32 folder>"


def add_comparisons(prepared) -> None:
    """Each early-exit record against its full-depth twin (same folder, same precision), round by round:
    throughput ratio, mean-latency saving, and both beside the FLOPs saving on the timed images; rescue
    quadrants where both were scored on labels."""
    twin = {(p.record["model"], p.variant.name): p for p in prepared}
    for p in prepared:
        full = twin.get((p.record["model"], p.variant.full_depth_name)) if p.variant.early_exit else None
        if full is None:
            continue
        ee_r, full_r = p.record["rounds"], full.record["rounds"]
        tp = ratio_within_rounds([r["throughput_fps"] for r in ee_r], [r["throughput_fps"] for r in full_r])
        saving = summary(
            [1 - a["latency_ms"]["mean"] / b["latency_ms"]["mean"] for a, b in zip(ee_r, full_r, strict=True)]
        )
        comp = {"variant": full.variant.name, "throughput_ratio": tp, "latency_saving": saving}
        fs = p.record.get("flops_saving_timed")
        if fs:
            comp["flops_saving_timed"] = fs
            comp["throughput_gain_over_flops_saving"] = (tp["median"] - 1) / fs
            comp["latency_saving_over_flops_saving"] = saving["median"] / fs
        p.record["vs_full_depth"] = comp
        a, b = p.measured, full.measured
        if a is not None and b is not None and a.correct is not None and b.correct is not None:
            p.record["rescue"] = rescue_quadrants(a.correct, b.correct)


def reference_pass(prepared, settings, dataset, progress: Progress | None):
    """(embeddings, description) of the FP32 full-depth reference: `settings.reference` run in f32, else the
    benched fp32 folder's f32 full-depth record; (None, reason) when there is neither."""
    if settings.reference is not None:
        from ovclip.runtime import Deployment

        dep = Deployment(
            settings.reference,
            settings.device,
            hint=settings.performance_hint,
            inference_precision="f32",
            runtime=settings.runtime,
            cache_dir=settings.cache_dir,
        )
        if dep.manifest.variant not in ("fp32", "fp16"):
            raise OvclipError(
                f"{settings.reference}: a {dep.manifest.variant} folder; the fidelity reference must be FP32",
                params="reference",
            )
        note(progress, f"fidelity reference: {settings.reference} ({dep.executed_precision()}, full depth)")
        return accuracy_pass(dep, dataset, None, False, 64).embeddings, f"{settings.reference} (f32, full depth)"
    for p in prepared:
        r = p.record
        fp32 = p.dep.manifest.variant == "fp32" and r["inference_precision"] == "f32" and not p.variant.early_exit
        if fp32 and p.measured is not None:
            return p.measured.embeddings, f"{r['model']} ({r['variant']}, f32, full depth)"
    return None, NO_REFERENCE


def add_fidelity(prepared, settings, dataset, progress: Progress | None) -> None:
    """Each measured record's image embeddings against the FP32 full-depth ones on the same images: "fidelity"
    (the record's own pass) and, for early exit under the label-free rule where that is another pass,
    "retrieval"."fidelity"."""
    if dataset is None or not any(p.measured is not None for p in prepared):
        return
    ref, about = reference_pass(prepared, settings, dataset, progress)
    ref_nn = None
    for p in prepared:
        if p.measured is None:
            continue
        if ref is None or p.measured.embeddings.shape != ref.shape:
            p.record["fidelity"] = None
            p.record["fidelity_note"] = about if ref is None else f"embeddings differ in shape from {about}"
            continue
        if ref_nn is None and len(ref) > NEIGHBOURS:
            ref_nn = nearest_neighbours(ref, NEIGHBOURS)
        passes = [("measured", p.measured)]
        if p.label_free is not None:
            passes.append(("label_free", p.label_free))
        for which, res in passes:
            nn = neighbours_of(p, which, res.embeddings) if len(ref) > NEIGHBOURS else None
            fid = {**embedding_fidelity(res.embeddings, ref, NEIGHBOURS, nn, ref_nn), "reference": about}
            fid["exit_rule"] = res.rule
            if which == "measured":
                p.record["fidelity"] = fid
            if which == "label_free" or (p.variant.early_exit and p.policy is p.dep.embedding_policy):
                p.record.setdefault("retrieval", {})["fidelity"] = fid
        p.neighbours.clear()  # not needed past here, and N x 10 per pass
