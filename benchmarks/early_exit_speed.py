"""Early exit in wall-clock time, and what the stage split costs when nobody exits.

    python benchmarks/early_exit_speed.py --ee out/int8 --unsplit out/int8-unsplit --data fashion-mnist:test

Variants timed in rotating rounds on the same real images (batch 8, THROUGHPUT hint, optimal nireq):
  unsplit      one INT8 vision IR (`ovclip quantize --no-exits --exits none`, same SmoothQuant alpha)
  staged       the early-exit folder's INT8 stages with exits off (full depth), default runtime: the stages
               joined into one graph
  ee           the same folder with its calibrated exit policy, default runtime: one graph per policy
               (stages + heads + gates + compaction, `ovclip.runtime.exit_graph`)
  staged-py    `staged` run stage by stage from Python (`runtime="stages"`, the static-shape/NPU path)
  ee-py        `ee` run stage by stage from Python
Accuracy, the exit histogram and the FLOPs saving come from one pass over the whole --data set.
Reports: staged / unsplit throughput (target >= 0.97) and the EE throughput gain against the FLOPs saving
(target: gain >= 0.8 x saving), medians of the rounds, ratios within each round.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import Run, deployment_timer, image_batches, interleaved, median, table

from ovclip.bench.report import templates_for
from ovclip.bench.runner import accuracy_pass, optimal_nireq
from ovclip.data.datasets import open_dataset
from ovclip.policy.flops import flops_to_exit, full_depth_flops
from ovclip.runtime import Deployment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ee", default="out/int8", help="INT8 folder with an exit policy")
    ap.add_argument("--unsplit", default="out/int8-unsplit", help="INT8 folder with one vision stage")
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool", type=int, default=1024, help="real images cycled through in the timed runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run = Run("early_exit_speed")
    data = open_dataset(args.data)
    ee = Deployment(args.ee, hint="throughput")
    un = Deployment(args.unsplit, hint="throughput")
    ee_py = Deployment(args.ee, hint="throughput", runtime="stages")
    assert ee.policy is not None, f"{args.ee} has no exit policy"
    assert len(un.vision["stages"]) == 1, f"{args.unsplit} is not an unsplit folder"
    templates = templates_for(args.data)
    cls = ee.class_embeddings(data.prompt_names, templates)
    cls_un = un.class_embeddings(data.prompt_names, templates)
    full = accuracy_pass(ee, data, cls, False, 256)
    early = accuracy_pass(ee, data, cls, True, 256)
    one = accuracy_pass(un, data, cls_un, False, 256)
    flops_full = full_depth_flops(ee.vision, int(ee.manifest["embedding_dim"]))
    saving = 1 - early.mean_flops / flops_full
    hist = {str(L): int(np.sum(early.exit_layer == L)) for L in [*ee.policy.exits, ee.num_layers]}
    print(
        f"accuracy on {data.source}: unsplit {one.top1:.4f}, staged full depth {full.top1:.4f}, "
        f"early exit {early.top1:.4f}; FLOPs saving {100 * saving:.2f}%; exits {hist}"
    )
    px = data.pixels(np.arange(min(args.pool, len(data))), ee.preprocess_config)
    batches = image_batches(px, args.batch)
    nireq = optimal_nireq(ee)
    runs = {
        name: deployment_timer(dep, batches, args.seconds, class_emb=c, early_exit=early, nireq=nireq)
        for name, dep, c, early in (
            ("unsplit", un, cls_un, False),
            ("staged", ee, cls, False),
            ("ee", ee, cls, True),
            ("staged-py", ee_py, cls, False),
            ("ee-py", ee_py, cls, True),
        )
    }
    res = interleaved(runs, args.repeats)
    per_round_split = [s / u for s, u in zip(res["staged"]["runs"], res["unsplit"]["runs"], strict=True)]
    per_round_gain = [e / s - 1 for e, s in zip(res["ee"]["runs"], res["staged"]["runs"], strict=True)]
    per_round_gain_un = [e / u - 1 for e, u in zip(res["ee"]["runs"], res["unsplit"]["runs"], strict=True)]
    per_round_gain_py = [e / s - 1 for e, s in zip(res["ee-py"]["runs"], res["staged-py"]["runs"], strict=True)]
    pool_exits = ee.run_vision(px, cls, early_exit=True).exit_layer
    emb_dim = int(ee.manifest["embedding_dim"])
    pool_flops = [flops_to_exit(ee.vision, emb_dim, int(L), ee.policy.exits, len(cls)) for L in pool_exits]
    pool_saving = 1 - float(np.mean(pool_flops)) / flops_full
    out = {
        "data": data.source,
        "n_images": len(data),
        "batch": args.batch,
        "nireq": nireq,
        "inference_precision": ee.executed_precision(),
        "top1": {"unsplit": one.top1, "staged_full_depth": full.top1, "early_exit": early.top1},
        "flops_per_image": {"full_depth": flops_full, "early_exit": early.mean_flops},
        "flops_saving": saving,
        "flops_saving_timed_pool": float(pool_saving),
        "exit_histogram": hist,
        "throughput": res,
        "staged_over_unsplit": {"median": median(per_round_split), "runs": per_round_split},
        "ee_gain_over_staged": {"median": median(per_round_gain), "runs": per_round_gain},
        "ee_gain_over_unsplit": {"median": median(per_round_gain_un), "runs": per_round_gain_un},
        "ee_py_gain_over_staged_py": {"median": median(per_round_gain_py), "runs": per_round_gain_py},
        "gain_over_saving": median(per_round_gain) / pool_saving if pool_saving > 0 else None,
    }
    run.data.update(out)
    rows = [{"variant": k, "img/s": res[k]["median"], "lat ms": res[k]["latency_median_ms"]} for k in runs]
    print(table(rows, [("variant", "variant", "s"), ("img/s", "img/s", ".1f"), ("lat ms", "latency median ms", ".2f")]))
    print(f"staged / unsplit: {out['staged_over_unsplit']['median']:.3f} (target >= 0.97)")
    print(
        f"early-exit gain: {100 * out['ee_gain_over_staged']['median']:.1f}% for a {100 * pool_saving:.1f}% "
        f"FLOPs saving on the timed images ({100 * saving:.1f}% on all); gain/saving {out['gain_over_saving']:.2f} "
        "(target >= 0.8)"
    )
    print(
        f"against the unsplit IR: {100 * out['ee_gain_over_unsplit']['median']:.1f}%; stage by stage from Python: "
        f"{100 * out['ee_py_gain_over_staged_py']['median']:.1f}%"
    )
    run.finish(None if args.json is None else Path(args.json))


if __name__ == "__main__":
    main()
