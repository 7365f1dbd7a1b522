"""ViT-B/32 image-tower speed (random weights, speed only): FP32 (f32), FP32 at the plugin's default float
precision (no hint: bf16 on CPUs with AMX/AVX512_BF16, f32 elsewhere), bf16 where the CPU has it and ovclip
INT8, timed in one run beside the machine's MatMul limit of the same shapes.

    python benchmarks/vitb32_speed.py                          # 20 s x 3 rounds per variant
    python benchmarks/vitb32_speed.py --smooth-quant off,auto  # one INT8 variant per SmoothQuant setting
    python benchmarks/vitb32_speed.py --benchmark-app          # also benchmark_app on each IR, same rounds

Builds with ovclip's library from `random:vit-b-32`: FP32 unsplit (`ovclip export --exits none`) and INT8
(`ovclip quantize --no-exits --exits none --smooth-quant S`). Times each deployment with ovclip's Deployment
(batch 8, THROUGHPUT hint, optimal nireq; FP32 with INFERENCE_PRECISION_HINT f32, and bf16 when supported;
INT8 with the plugin's default) and the OpenVINO MatMul chains of benchmarks/matmul_limit.py, all in the
same interleaved rounds; medians. For each variant: FLOPs per image (ovclip.policy.flops.full_depth_flops)
x img/s = attained G(FL)OP/s, and its fraction of the MatMul limit of its precision.
Writes benchmarks/results/vitb32_speed.json (or --json).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import _common as C
import matmul_limit as ML

LABEL = "random weights, speed only"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:vit-b-32", help="checkpoint (default random:vit-b-32)")
    ap.add_argument("--smooth-quant", default="off", help="comma-separated: off, auto or alphas; one INT8 each")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ovclip-vitb32-speed"))
    ap.add_argument("--reuse", action="store_true", help="reuse folders already in --work (skip export/quantize)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per variant per round")
    ap.add_argument("--matmul-seconds", type=float, default=5.0, help="timed seconds per MatMul chain per round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--benchmark-app", action="store_true", help="also time each IR with benchmark_app")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    run = C.Run("vitb32_speed", note=LABEL if args.model.startswith("random:") else None)
    import time

    from ovclip.checkpoint import load_checkpoint
    from ovclip.data.builtin import builtin_calibration
    from ovclip.export import ExportOptions, export_deployment
    from ovclip.folder import read_manifest
    from ovclip.policy.flops import full_depth_flops
    from ovclip.progress import notes_to
    from ovclip.quantize import QuantizationConfig
    from ovclip.quantize.pipeline import quantize_deployment
    from ovclip.runtime import Deployment
    from ovclip.runtime.device import supports_bf16

    src = C.builtin_model_or_exit(args.model) if args.model == "builtin" else args.model
    folders: dict[str, Path] = {"fp32": args.work / "fp32"}
    sq = [s.strip() for s in args.smooth_quant.split(",") if s.strip()]
    for s in sq:
        folders[f"int8-sq-{s}"] = args.work / f"int8-sq-{s}"
    build = {}
    if not args.reuse or not all((f / "manifest.json").is_file() for f in folders.values()):
        if args.work.exists():
            shutil.rmtree(args.work)
        ck = load_checkpoint(src)
        t0 = time.time()
        export_deployment(ck, folders["fp32"], ExportOptions(exits="none"))
        build["fp32"] = {
            "seconds": round(time.time() - t0, 1),
            "equivalent": f"ovclip export --model {src} --exits none",
        }
        for s in sq:
            t0 = time.time()
            cfg = QuantizationConfig(smooth_quant_alpha=QuantizationConfig.parse_alpha(s))
            m = quantize_deployment(
                ck,
                folders[f"int8-sq-{s}"],
                builtin_calibration(),
                cfg,
                exits="none",
                progress=notes_to(lambda x: print(f"ovclip  : {x}")),
            )
            build[f"int8-sq-{s}"] = {
                "seconds": round(time.time() - t0, 1),
                "smooth_quant_alpha": m["quantization"]["smooth_quant_alpha"],
                "equivalent": f"ovclip quantize --model {src} --no-exits --exits none --smooth-quant {s}",
            }
        print("built   : " + ", ".join(f"{k} {v['seconds']} s" for k, v in build.items()))
    man = read_manifest(folders["fp32"])
    vision, emb = man.vision, int(man["embedding_dim"])
    flops = full_depth_flops(vision, emb)
    print(
        f"model   : {man['source']['description']} ({LABEL if not man.trained else 'trained weights'}); "
        f"{flops / 1e9:.3f} GFLOP per image"
    )

    variants: dict[str, tuple[Path, str | None, str]] = {"fp32-f32": (folders["fp32"], "f32", "f32")}
    # the plugin's default float precision (no INFERENCE_PRECISION_HINT): bf16 on AMX/AVX512_BF16 CPUs, f32 here
    default = Deployment(folders["fp32"], "CPU", hint="throughput", inference_precision=None).executed_precision()
    variants[f"fp32-default({default})"] = (folders["fp32"], None, default)
    skipped = {}
    if supports_bf16("CPU"):
        variants["fp32-bf16"] = (folders["fp32"], "bf16", "bf16")
    else:
        skipped["fp32-bf16"] = "not supported on this CPU (OpenVINO's OPTIMIZATION_CAPABILITIES has no BF16)"
    for s in sq:
        variants[f"int8-sq-{s}"] = (folders[f"int8-sq-{s}"], None, "int8")

    batches = C.random_batches(args.batch, vision["image_size"])
    runners, facts = {}, {}
    from ovclip.bench.runner import optimal_nireq

    for name, (folder, prec, _) in variants.items():
        dep = Deployment(folder, "CPU", hint="throughput", inference_precision=prec)
        n = optimal_nireq(dep)
        facts[name] = {
            "folder": str(folder),
            "nireq": n,
            "executed_precision": dep.executed_precision(),
            "matmuls": C.runtime_matmuls(dep.full_depth_compiled()),
        }
        runners[name] = C.deployment_timer(dep, batches, args.seconds, nireq=n)
    if args.benchmark_app:
        exe = shutil.which("benchmark_app")
        shape = [args.batch, 3, vision["image_size"], vision["image_size"]]
        for name, (folder, prec, _) in variants.items():
            cmd = C.benchmark_app_command(exe, folder / "vision_stage0.xml", shape, args.seconds, prec)
            facts[f"benchmark_app:{name}"] = {"command": " ".join(cmd)}
            runners[f"benchmark_app:{name}"] = C.benchmark_app_timer(cmd, args.batch)
    mm_precisions = sorted({p for _, _, p in variants.values()}, key=["f32", "bf16", "int8"].index)
    mm_runners, mm_facts = ML.limit_runners(vision, args.batch, args.matmul_seconds, mm_precisions, "matmul:")
    runners.update(mm_runners)
    facts.update(mm_facts)
    C.print_timing(
        f"batch {args.batch}; models {args.seconds} s, MatMuls {args.matmul_seconds} s; "
        f"{args.repeats} interleaved rounds; THROUGHPUT hint, optimal nireq"
    )
    speed = C.interleaved(runners, args.repeats)
    mix = ML.mix_rates(vision, speed, mm_precisions, "matmul:")

    rows = []
    for name, (_, _, p) in variants.items():
        fps = speed[name]["median"]
        rows.append(
            {
                "variant": name,
                "prec": facts[name]["executed_precision"],
                "int8mm": f"{facts[name]['matmuls']['int8']}/{facts[name]['matmuls']['total']}",
                "fps": fps,
                "spread": 100 * speed[name]["spread"],
                "gops": fps * flops / 1e9,
                "limit": mix[p],
                "frac": 100 * ML.attained(fps, flops, mix[p]),
                "x": fps / speed["fp32-f32"]["median"],
            }
        )
        if args.benchmark_app:
            b = speed[f"benchmark_app:{name}"]["median"]
            rows[-1]["ba"] = b
            rows[-1]["ba_ratio"] = fps / b
    for p, v in mix.items():
        rows.append({"variant": f"MatMul limit {p}", "gops": v})
    cols = [
        ("variant", "variant", ""),
        ("prec", "runs in", ""),
        ("int8mm", "INT8 MatMuls", ""),
        ("fps", "img/s (median)", ".1f"),
        ("x", "x f32", ".2f"),
        ("spread", "spread %", ".1f"),
        ("gops", "G(FL)OP/s", ".1f"),
        ("limit", "MatMul limit", ".1f"),
        ("frac", "% of limit", ".1f"),
    ]
    if args.benchmark_app:
        cols += [("ba", "benchmark_app", ".1f"), ("ba_ratio", "ovclip/bapp", ".3f")]
    run.data.update(
        model=src,
        label=LABEL,
        build=build,
        flops_per_image=flops,
        vision=vision,
        batch=args.batch,
        seconds=args.seconds,
        matmul_seconds=args.matmul_seconds,
        repeats=args.repeats,
        skipped=skipped,
        facts=facts,
        throughput=speed,
        matmul_limit=mix,
        rows=rows,
    )
    print()
    for k, why in skipped.items():
        print(f"skipped : {k}: {why}")
    print(C.table(rows, cols, title=f"{man['source']['description']} ({LABEL}), batch {args.batch}, THROUGHPUT hint"))
    run.finish(args.json)


if __name__ == "__main__":
    main()
