"""Early exit in wall-clock time, and what the stage split costs when nobody exits.

    python benchmarks/early_exit_speed.py --ee out/int8 --unsplit out/int8-unsplit --data fashion-mnist:test

Variants timed in rotating rounds (`ovclip.bench.rounds`, the rounds `ovclip bench` times its records in) on the
same real images (batch 8, THROUGHPUT hint, optimal nireq):

  unsplit      one INT8 vision IR (`ovclip quantize --no-exits --exits none`, same SmoothQuant alpha); left
               out without --unsplit
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

from ovclip.bench.passes import accuracy_pass
from ovclip.bench.report import templates_for
from ovclip.bench.runner import optimal_nireq
from ovclip.data.datasets import open_dataset
from ovclip.policy.flops import flops_to_exit, full_depth_flops
from ovclip.runtime import Deployment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ee", default="out/int8", help="INT8 folder with an exit policy")
    ap.add_argument("--unsplit", default=None, help="INT8 folder with one vision stage (optional)")
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool", type=int, default=1024, help="real images cycled through in the timed runs")
    ap.add_argument("--no-python", action="store_true", help="leave out the stage-by-stage-from-Python variants")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run = Run("early_exit_speed")
    data = open_dataset(args.data)
    ee = Deployment(args.ee, hint="throughput")
    assert ee.policy is not None, f"{args.ee} has no exit policy"
    un = Deployment(args.unsplit, hint="throughput") if args.unsplit else None
    assert un is None or len(un.vision["stages"]) == 1, f"{args.unsplit} is not an unsplit folder"
    templates = templates_for(args.data)
    cls = ee.class_embeddings(data.prompt_names, templates)
    cls_un = un.class_embeddings(data.prompt_names, templates) if un else None
    out = accuracy_section(ee, un, data, cls, cls_un)
    px = data.pixels(np.arange(min(args.pool, len(data))), ee.preprocess_config)
    batches = image_batches(px, args.batch)
    nireq = optimal_nireq(ee)
    timed = [("staged", ee, cls, False), ("ee", ee, cls, True)]
    if un is not None:
        timed.insert(0, ("unsplit", un, cls_un, False))
    if not args.no_python:
        ee_py = Deployment(args.ee, hint="throughput", runtime="stages")
        timed += [("staged-py", ee_py, cls, False), ("ee-py", ee_py, cls, True)]
    runs = {
        name: deployment_timer(dep, batches, args.seconds, class_emb=c, early_exit=early, nireq=nireq)
        for name, dep, c, early in timed
    }
    res = interleaved(runs, args.repeats)
    pool_exits = ee.run_vision(px, cls, early_exit=True).exit_layer
    emb_dim = int(ee.manifest["embedding_dim"])
    pool_flops = [flops_to_exit(ee.vision, emb_dim, int(L), ee.policy.exits, len(cls)) for L in pool_exits]
    pool_saving = 1 - float(np.mean(pool_flops)) / out["flops_per_image"]["full_depth"]
    out.update(batch=args.batch, nireq=nireq, inference_precision=ee.executed_precision(), throughput=res)
    out["flops_saving_timed_pool"] = float(pool_saving)
    out.update(ratios(res))
    gain = out["ee_gain_over_staged"]["median"]
    out["gain_over_saving"] = gain / pool_saving if pool_saving > 0 else None
    run.data.update(out)
    rows = [{"variant": k, "img/s": res[k]["median"], "lat ms": res[k]["latency_median_ms"]} for k in runs]
    print(table(rows, [("variant", "variant", "s"), ("img/s", "img/s", ".1f"), ("lat ms", "latency median ms", ".2f")]))
    print_ratios(out, pool_saving)
    run.finish(None if args.json is None else Path(args.json))


def accuracy_section(ee, un, data, cls, cls_un) -> dict:
    """Top-1, FLOPs and exits over the whole --data set (one pass per variant)."""
    full = accuracy_pass(ee, data, cls, False, 256)
    early = accuracy_pass(ee, data, cls, True, 256)
    one = accuracy_pass(un, data, cls_un, False, 256) if un is not None else None
    flops_full = full_depth_flops(ee.vision, int(ee.manifest["embedding_dim"]))
    saving = 1 - early.mean_flops / flops_full
    hist = {str(L): int(np.sum(early.exit_layer == L)) for L in [*ee.policy.exits, ee.num_layers]}
    print(
        f"accuracy on {data.source}: unsplit {one.top1 if one else float('nan'):.4f}, staged full depth "
        f"{full.top1:.4f}, early exit {early.top1:.4f}; FLOPs saving {100 * saving:.2f}%; exits {hist}"
    )
    return {
        "data": data.source,
        "n_images": len(data),
        "top1": {"unsplit": one.top1 if one else None, "staged_full_depth": full.top1, "early_exit": early.top1},
        "flops_per_image": {"full_depth": flops_full, "early_exit": early.mean_flops},
        "flops_saving": saving,
        "exit_histogram": hist,
    }


def ratios(res: dict) -> dict:
    """Ratios within each round (median over rounds) of the variants that were timed."""

    def per_round(a: str, b: str, minus: float) -> dict | None:
        if a not in res or b not in res:
            return None
        r = [x / y - minus for x, y in zip(res[a]["runs"], res[b]["runs"], strict=True)]
        return {"median": median(r), "runs": r}

    return {
        "staged_over_unsplit": per_round("staged", "unsplit", 0.0),
        "ee_over_staged": per_round("ee", "staged", 0.0),
        "ee_gain_over_staged": per_round("ee", "staged", 1.0),
        "ee_gain_over_unsplit": per_round("ee", "unsplit", 1.0),
        "ee_py_gain_over_staged_py": per_round("ee-py", "staged-py", 1.0),
    }


def print_ratios(out: dict, pool_saving: float) -> None:
    if out["staged_over_unsplit"]:
        print(f"staged / unsplit: {out['staged_over_unsplit']['median']:.3f} (target >= 0.97)")
    print(
        f"ee / staged: {out['ee_over_staged']['median']:.4f} within rounds "
        f"(rounds: {', '.join(f'{x:.4f}' for x in out['ee_over_staged']['runs'])})"
    )
    print(
        f"early-exit gain: {100 * out['ee_gain_over_staged']['median']:.1f}% for a {100 * pool_saving:.1f}% "
        f"FLOPs saving on the timed images ({100 * out['flops_saving']:.1f}% on all); gain/saving "
        f"{out['gain_over_saving']:.2f} (target >= 0.8)"
    )
    if out["ee_gain_over_unsplit"]:
        print(f"against the unsplit IR: {100 * out['ee_gain_over_unsplit']['median']:.1f}%")
    if out["ee_py_gain_over_staged_py"]:
        print(f"stage by stage from Python: {100 * out['ee_py_gain_over_staged_py']['median']:.1f}%")


if __name__ == "__main__":
    main()
