"""Compile time and first inference with OpenVINO's model cache (CACHE_DIR) off, cold and warm, on CPU.

    python benchmarks/compile_cache.py out/fp32 out/int8 --repeats 3

Each measurement is a fresh process (`ovclip.bench.startup`: nothing compiled before in it): read the folder,
compile what `run_vision` needs, run one batch. Per record and repeat, three processes: cache off; cold (an empty
cache folder, which this compile writes); warm (the folder cold wrote). Records are rotated round by round
(`ovclip.bench.rounds`); medians of the repeats, the warm/off ratio taken within each repeat.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import Run, median, table

from ovclip.bench.rounds import rotating_rounds
from ovclip.bench.startup import measure_startup
from ovclip.bench.variants import variants
from ovclip.folder import read_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--hint", default="throughput")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=10, help="class embeddings given to a class-score exit rule")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run = Run("compile_cache")
    specs = {}
    for folder in args.folders:
        m = read_manifest(folder)
        for v in variants(m, args.device, "f32"):
            specs[f"{Path(folder).name} {v.name}"] = {
                "folder": str(Path(folder).resolve()),
                "device": args.device,
                "hint": args.hint,
                "precision": v.precision,
                "runtime": "auto",
                "early_exit": v.early_exit,
                "classes": args.classes if m.get("exit_policy") else 0,
                "batch": args.batch,
            }
    got = rotating_rounds(
        {k: (lambda s=s: measure_startup(s)) for k, s in specs.items()},
        args.repeats,
        on_result=lambda r, k, res: print(
            f"  round {r + 1} {k}: compile off {res['off']['compile_s']:.2f} s, cold {res['cold']['compile_s']:.2f} s,"
            f" warm {res['warm']['compile_s']:.2f} s",
            flush=True,
        ),
    )
    rows, out = [], {}
    for k, runs in got.items():
        row = {"record": k, "cache_files": runs[-1]["cache_files"], "cache_mb": cache_mb(runs)}
        for mode in ("off", "cold", "warm"):
            row[f"compile_{mode}"] = median([r[mode]["compile_s"] for r in runs])
            row[f"first_{mode}"] = median([r[mode]["first_inference_ms"] for r in runs])
            row[f"total_{mode}"] = median([r[mode]["to_first_result_s"] for r in runs])
        row["warm_over_off"] = median([r["warm_over_off_compile"] for r in runs])
        rows.append(row)
        out[k] = {"runs": runs, "median": row}
    run.data.update(records=out, repeats=args.repeats, batch=args.batch)
    cols = [("record", "record", "s")]
    cols += [(f"compile_{m}", f"compile {m} s", ".2f") for m in ("off", "cold", "warm")]
    cols += [("warm_over_off", "warm/off", ".2f"), ("cache_mb", "cache MB", ".1f")]
    cols += [(f"first_{m}", f"1st inf {m} ms", ".1f") for m in ("off", "warm")]
    cols += [(f"total_{m}", f"to 1st result {m} s", ".2f") for m in ("off", "cold", "warm")]
    print(table(rows, cols))
    run.finish(None if args.json is None else Path(args.json))


def cache_mb(runs: list[dict]) -> float:
    return runs[-1]["cache_bytes"] / 2**20


if __name__ == "__main__":
    main()
