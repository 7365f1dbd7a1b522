"""#12: early exit calibrated on images without labels, measured on a labelled test split.

For each deployment folder, on the images of --data (default: the full Fashion-MNIST test split, 10,000 images):
- zero-shot top-1 at full depth and with the folder's exit policy (class embeddings given), its FLOPs saving and
  exit histogram;
- class-prompt retrieval (each class prompt ranks every image: P@10, P@100, mAP) at full depth and with the
  label-free exit rule (no class embeddings: what an embedding pipeline runs);
- the label-free rule's embedding fidelity: mean cosine of each image's early-exit embedding to the folder's own
  full-depth embedding (its one-sided 95 % lower bound, the minimum), to the FP32 reference's (--reference), the
  top-10 nearest-neighbour overlap with full depth within the set, the FLOPs saving and exit histogram; and
  whether the bound the folder was calibrated to (manifest: exit_policy_embedding.info.objective) holds here.

No timing: accuracy, FLOPs and fidelity only (speed: `ovclip bench`). Also writes the shipped 6,000 calibration
images as one flat folder of PNG files without labels (--write-flat DIR), the input of the #12 build:

    python benchmarks/label_free_calibration.py --write-flat /tmp/q12/flat
    ovclip export --out /tmp/q12/fp32
    ovclip quantize --calibration /tmp/q12/flat --out /tmp/q12/int8flat
    python benchmarks/label_free_calibration.py /tmp/q12/int8flat --reference /tmp/q12/fp32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import machine, versions

from ovclip.bench.fidelity import embedding_fidelity, nearest_neighbours
from ovclip.bench.metrics import class_prompt_retrieval
from ovclip.bench.report import templates_for
from ovclip.data.builtin import CALIBRATION_FILE, load_npz
from ovclip.data.datasets import open_dataset
from ovclip.exits.fidelity import fidelity_bound
from ovclip.policy.flops import full_depth_flops, mean_flops
from ovclip.runtime import Deployment


def write_flat(folder: Path) -> int:
    """The shipped calibration images as `img_00000.png`... in one folder (labels dropped)."""
    from PIL import Image

    images, _, _ = load_npz(CALIBRATION_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img, mode="L").save(folder / f"img_{i:05d}.png")
    return len(images)


def run(dep: Deployment, data, class_emb: np.ndarray | None, early_exit: bool, chunk: int = 500, policy=None):
    embs, layers = [], []
    for i in range(0, len(data), chunk):
        px = data.pixels(np.arange(i, min(i + chunk, len(data))), dep.preprocess_config)
        out = dep.run_vision(px, class_emb, early_exit=early_exit, policy=policy)
        embs.append(out.embeddings)
        layers.append(out.exit_layer)
    return np.concatenate(embs), np.concatenate(layers)


def exit_record(dep: Deployment, exits: list[int], layer: np.ndarray, classes: int) -> dict:
    emb_dim = int(dep.manifest["embedding_dim"])
    saving = 1 - mean_flops(dep.vision, emb_dim, layer, exits, classes) / full_depth_flops(dep.vision, emb_dim)
    hist = {str(int(L)): int(np.sum(layer == L)) for L in np.unique(layer)}
    return {"flops_saving": float(saving), "exit_histogram": hist}


def measure(folder: Path, data, reference: np.ndarray | None, templates: list[str], sweep: bool = False) -> dict:
    dep = Deployment(folder)
    cls = dep.class_embeddings(data.prompt_names, templates)
    top1 = lambda e: float(np.mean(np.argmax(e @ cls.T, axis=1) == data.labels))  # noqa: E731
    full, _ = run(dep, data, cls, early_exit=False)
    rec: dict = {"folder": str(folder), "n_images": len(data), "int8_top1": top1(full)}
    rec["retrieval_full_depth"] = class_prompt_retrieval(full, cls, data.labels)
    if dep.policy is not None:
        ee, layer = run(dep, data, cls, early_exit=True)
        rec["policy"] = {"rule": dep.policy.rule, "exits": dep.policy.exits, "top1": top1(ee)}
        rec["policy"] |= exit_record(dep, dep.policy.exits, layer, len(cls) if dep.policy.needs_labels else 0)
    lf = dep.embedding_policy
    if lf is not None:
        emb, layer = run(dep, data, None, early_exit=True)
        cos = np.sum(emb * full, axis=1)
        neighbours_full = nearest_neighbours(full)
        fid = embedding_fidelity(emb, full, ref_neighbours=neighbours_full)
        bound = lf.info.get("objective", {}).get("min_fidelity")
        rec["label_free"] = {
            "rule": lf.rule,
            "exits": lf.exits,
            "calibrated_to": lf.info.get("objective"),
            "calibration_fidelity": lf.info.get("calibration_fidelity"),
            "mean_cosine_to_full_depth": float(cos.mean()),
            "lower_bound_95": fidelity_bound(cos),
            "min_cosine": float(cos.min()),
            "p01_cosine": float(np.percentile(cos, 1)),
            "top10_overlap_with_full_depth": fid["top10_overlap"],
            "bound_holds": None if bound is None else bool(cos.mean() >= bound),
            "top1_with_class_embeddings_applied_after": top1(emb),
            "retrieval": class_prompt_retrieval(emb, cls, data.labels),
            **exit_record(dep, lf.exits, layer, 0),
        }
        if reference is not None:
            rec["label_free"]["mean_cosine_to_fp32"] = float(np.mean(np.sum(emb * reference, axis=1)))
            rec["full_depth_mean_cosine_to_fp32"] = float(np.mean(np.sum(full * reference, axis=1)))
    rec["manifest_calibration"] = dep.manifest.get("quantization", {}).get("calibration")
    if sweep and lf is not None:
        rec["label_free_pareto"] = [
            sweep_point(dep, data, cls, full, neighbours_full, p, top1) for p in lf.info.get("pareto", [])
        ]
    return rec


def sweep_point(dep: Deployment, data, cls, full, neighbours_full, point: dict, top1) -> dict:
    """The label-free policy at another of its calibrated bounds (the manifest's Pareto thresholds), on --data."""
    lf = dep.embedding_policy
    thresholds = {int(k): v for k, v in point["thresholds"].items()}
    emb, layer = run(dep, data, None, early_exit=True, policy=replace(lf, thresholds=thresholds))
    cos = np.sum(emb * full, axis=1)
    fid = embedding_fidelity(emb, full, ref_neighbours=neighbours_full)
    rec = {
        "min_fidelity": point["min_fidelity"],
        "calibration_flops_saving": point.get("calibration_flops_saving"),
        "mean_cosine_to_full_depth": float(cos.mean()),
        "lower_bound_95": fidelity_bound(cos),
        "bound_holds": bool(cos.mean() >= point["min_fidelity"]),
        "top10_overlap_with_full_depth": fid["top10_overlap"],
        "top1_with_class_embeddings_applied_after": top1(emb),
        "mAP": class_prompt_retrieval(emb, cls, data.labels)["mAP"],
        **exit_record(dep, lf.exits, layer, 0),
    }
    print(json.dumps(rec), flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--reference", type=Path, help="FP32 folder: cosine of every embedding to its full depth")
    ap.add_argument("--write-flat", type=Path, help="write the shipped calibration images here as flat PNGs")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sweep", action="store_true", help="also every calibrated bound of the label-free Pareto")
    args = ap.parse_args(argv)
    if args.write_flat:
        print(f"wrote {write_flat(args.write_flat)} images to {args.write_flat}")
    if not args.folders:
        return 0
    data = open_dataset(args.data)
    templates = templates_for(args.data)
    reference = None
    if args.reference:
        reference, _ = run(Deployment(args.reference), data, None, early_exit=False)
    out = {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "versions": versions(),
        "data": data.source,
        "records": [measure(f, data, reference, templates, args.sweep) for f in args.folders],
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
