"""Offline throughput against the batch, full depth and early exit, in one set of rotating rounds.

    python benchmarks/offline_batch_sweep.py --folder out/int8 --batches 8,16,32,64

The same folder timed at every batch, with exits off (`int8`) and on (`int8-ee`), THROUGHPUT hint, the device's
optimal number of requests, on the same real test images; every (variant, batch) is one record of the rotating
rounds (`ovclip.bench.rounds`), so the ratios ee / full depth at each batch are taken within rounds. This is what
`ovclip bench`'s offline batch choice (`ovclip.bench.offline_batch`) rests on: full depth is flat in the batch on a
CPU, early exit is not, because fewer images are left for the blocks after each exit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import Run, deployment_timer, image_batches, interleaved, print_timing, table

from ovclip.bench.report import templates_for
from ovclip.data.datasets import open_dataset
from ovclip.runtime import Deployment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="out/int8", help="an INT8 folder with an exit policy")
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--batches", default="8,16,32,64")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool", type=int, default=1024, help="real images cycled through in the timed runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run = Run("offline_batch_sweep")
    batches = [int(b) for b in args.batches.split(",")]
    data = open_dataset(args.data)
    dep = Deployment(args.folder, hint="throughput")
    assert dep.policy is not None, f"{args.folder} has no exit policy"
    cls = dep.class_embeddings(data.prompt_names, templates_for(args.data))
    px = data.pixels(np.arange(min(args.pool, len(data))), dep.preprocess_config)
    runs = {}
    for b in batches:
        pool = image_batches(px, b)
        runs[f"full b{b}"] = deployment_timer(dep, pool, args.seconds, class_emb=cls, early_exit=False)
        runs[f"ee b{b}"] = deployment_timer(dep, pool, args.seconds, class_emb=cls, early_exit=True)
    print_timing(f"{len(runs)} records x {args.repeats} rotating rounds x {args.seconds:g} s, {len(px)} images")
    res = interleaved(runs, args.repeats)
    rows = []
    for b in batches:
        full, ee = res[f"full b{b}"], res[f"ee b{b}"]
        ratios = [e / f for e, f in zip(ee["runs"], full["runs"], strict=True)]
        rows.append(
            {
                "batch": b,
                "full_depth": full["median"],
                "early_exit": ee["median"],
                "ratio_median": float(np.median(ratios)),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
        )
    print()
    print(
        table(
            rows,
            [
                ("batch", "batch", "d"),
                ("full_depth", "full depth img/s", ".1f"),
                ("early_exit", "early exit img/s", ".1f"),
                ("ratio_median", "ee / full (within rounds)", ".3f"),
                ("ratio_min", "min", ".3f"),
                ("ratio_max", "max", ".3f"),
            ],
        )
    )
    run.data.update(folder=args.folder, data=data.source, images=len(px), rows=rows, timings=res)
    run.finish(None if args.json is None else Path(args.json))


if __name__ == "__main__":
    main()
