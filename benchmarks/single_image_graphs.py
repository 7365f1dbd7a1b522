"""One image at a time: the graphs `Deployment` runs for a single image, timed request by request.

    python benchmarks/single_image_graphs.py --folder out/int8 --rounds 30 --seconds 0.5

Four compiled models of one INT8 folder with an exit policy, each fed one real test image per request (LATENCY hint,
one request in flight), timed in many short rotating rounds (`ovclip.bench.rounds`) so that a burst of host load
hits every model alike:

  full-dynamic   the stages joined end to end, dynamic batch (what a batch of any size runs)
  full-static    the same, compiled for exactly one image (`ovclip.runtime.exit_branches.for_one_image`)
  ee-dynamic     the exit policy as nested If ops (`exit_branches`), dynamic shapes
  ee-static      the same, compiled for one image and the label set's class count (what `run_vision` runs)

Before timing, the static early-exit model is checked against the dynamic one image by image (same exit block).
Reports the median latency per model and the early-exit latency saving within rounds, dynamic and static, next to
the FLOPs saving of the same images. Python overhead of `Deployment.run_vision` is not included (raw requests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import Run, image_batches, interleaved, print_timing, table, timed

from ovclip.bench.report import templates_for
from ovclip.data.datasets import open_dataset
from ovclip.ir import compile_model
from ovclip.policy.flops import full_depth_flops, mean_flops
from ovclip.runtime import Deployment
from ovclip.runtime.exit_branches import exit_branches, for_one_image
from ovclip.runtime.exit_graph import exit_graph


def compiled_models(dep: Deployment, classes: int) -> dict:
    """The four models of the module docstring, compiled with the Deployment's own settings."""
    policy, emb = dep.policy, int(dep.manifest["embedding_dim"])

    def parts():
        stages = [dep._models[s["file"]].clone() for s in dep.vision["stages"]]
        ends = [s["blocks"][1] for s in dep.vision["stages"]]
        return stages, ends, {e: dep._models[policy.head_file(e)].clone() for e in policy.exits}

    models = {
        "full-dynamic": exit_graph(*parts(), None, emb),
        "full-static": for_one_image(exit_graph(*parts(), None, emb)),
        "ee-dynamic": exit_branches(*parts(), policy, emb),
        "ee-static": for_one_image(exit_branches(*parts(), policy, emb), classes),
    }
    return {name: compile_model(m, dep.device, dep._config) for name, m in models.items()}


def request_runner(compiled, scaled_classes: np.ndarray):
    req = compiled.create_infer_request()
    two = len(compiled.inputs) > 1

    def run(x: np.ndarray):
        req.infer({0: x, 1: scaled_classes} if two else {0: x}, share_inputs=True)
        return req.get_output_tensor(0).data.copy(), req.get_output_tensor(1).data.copy()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="out/int8", help="an INT8 folder with an exit policy")
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--images", type=int, default=300, help="real images cycled through, one per request")
    ap.add_argument("--seconds", type=float, default=0.5, help="timed seconds per model and round")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run = Run("single_image_graphs")
    data = open_dataset(args.data)
    dep = Deployment(args.folder, hint="latency")
    assert dep.policy is not None and dep.policy.needs_labels, f"{args.folder}: needs a class-score exit rule"
    cls = dep.class_embeddings(data.prompt_names, templates_for(args.data))
    scaled = np.ascontiguousarray(dep.logit_scale * cls, np.float32)
    px = data.pixels(np.arange(min(args.images, len(data))), dep.preprocess_config)
    images = image_batches(px, 1)
    runners = {k: request_runner(c, scaled) for k, c in compiled_models(dep, len(cls)).items()}
    exits = np.array([runners["ee-static"](x)[1][0] for x in images])
    dynamic_exits = np.array([runners["ee-dynamic"](x)[1][0] for x in images])
    assert (exits == dynamic_exits).all(), "static and dynamic early exit disagree on an exit block"
    emb = int(dep.manifest["embedding_dim"])
    saving = 1.0 - mean_flops(dep.vision, emb, exits, dep.policy.exits, len(cls)) / full_depth_flops(dep.vision, emb)
    print_timing(f"{len(runners)} models x {args.rounds} rotating rounds x {args.seconds:g} s, 1 image per request")
    res = interleaved({k: (lambda f=f: timed(f, images, 1, args.seconds)) for k, f in runners.items()}, args.rounds)
    ms = {k: np.array([1000.0 / t for t in v["runs"]]) for k, v in res.items()}
    rows = [{"model": k, "latency_ms": float(np.median(v))} for k, v in ms.items()]
    savings = {s: float(np.median(1.0 - ms[f"ee-{s}"] / ms[f"full-{s}"])) for s in ("dynamic", "static")}
    print()
    print(table(rows, [("model", "model", ""), ("latency_ms", "median ms per image", ".3f")]))
    for s, v in savings.items():
        print(
            f"early-exit latency saving ({s}, within rounds): {100 * v:.1f} % for {100 * saving:.1f} % fewer FLOPs "
            f"({v / saving:.2f}x)"
        )
    run.data.update(
        folder=args.folder,
        data=data.source,
        images=len(images),
        exit_histogram={str(L): int(np.sum(exits == L)) for L in sorted(set(exits.tolist()))},
        flops_saving=saving,
        latency_saving_within_rounds=savings,
        rows=rows,
        rounds_ms={k: v.tolist() for k, v in ms.items()},
    )
    run.finish(None if args.json is None else Path(args.json))


if __name__ == "__main__":
    main()
