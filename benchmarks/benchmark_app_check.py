"""Do ovclip's throughput figures agree with OpenVINO's own benchmark_app on the same IR and settings?

    python benchmarks/benchmark_app_check.py                               # builtin model, INT8, unsplit
    python benchmarks/benchmark_app_check.py --model random:vit-b-32 --smooth-quant off --seconds 20
    python benchmarks/benchmark_app_check.py --folder out/int8             # an existing unsplit deployment
    python benchmarks/benchmark_app_check.py --ir path/to/vision_stage0.xml

Builds (unless --folder/--ir) an unsplit INT8 vision IR with ovclip's library, the equivalent of
`ovclip quantize --no-exits --exits none` (or an FP32 one with --variant fp32: `ovclip export --exits none`),
then times, in --repeats interleaved rounds:
  benchmark_app   `benchmark_app -m vision_stage0.xml -d CPU -hint throughput -t SECONDS -shape [B,3,S,S]`
                  (its Throughput line; for fp32 also `-infer_precision f32`)
  ovclip-engine   the same IR reshaped to [B,3,S,S], compiled with the THROUGHPUT hint, optimal nireq threads
                  each with its own infer request, timed by ovclip.bench.throughput.measure
  ovclip-deploy   ovclip's Deployment (dynamic batch IR, as `ovclip bench` runs it), batch B (needs a folder)
and prints the medians and each one's ratio to benchmark_app (target: within 5%).
Writes benchmarks/results/benchmark_app_check.json (or --json).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import _common as C

TOLERANCE = 0.05


def build(src: str, variant: str, smooth_quant: str, out: Path) -> Path:
    from ovclip.checkpoint import load_checkpoint

    ck = load_checkpoint(src)
    if variant == "fp32":
        from ovclip.export import ExportOptions, export_deployment

        export_deployment(ck, out, ExportOptions(exits="none", overwrite=True))
    else:
        from ovclip.data.builtin import builtin_calibration
        from ovclip.progress import notes_to
        from ovclip.quantize import QuantizationConfig
        from ovclip.quantize.pipeline import quantize_deployment

        cfg = QuantizationConfig(smooth_quant_alpha=QuantizationConfig.parse_alpha(smooth_quant))
        quantize_deployment(
            ck,
            out,
            builtin_calibration(),
            cfg,
            exits="none",
            overwrite=True,
            progress=notes_to(lambda s: print(f"ovclip  : {s}")),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--model", default="builtin", help="checkpoint to build the IR from (default: builtin)")
    g.add_argument("--folder", type=Path, help="an existing unsplit ovclip deployment folder")
    g.add_argument("--ir", type=Path, help="a raw vision IR (.xml), input [?,3,S,S]")
    ap.add_argument("--variant", choices=["int8", "fp32"], default="int8")
    ap.add_argument("--smooth-quant", default="auto", help="for the INT8 build: auto, off or an alpha")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ovclip-benchmark-app-check"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    run = C.Run("benchmark_app_check")
    import openvino as ov

    from ovclip.folder import read_manifest
    from ovclip.runtime.device import compile_config, compile_model

    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(exe).exists():
        sys.exit("benchmark_app not found (it ships with the openvino wheel as a console script)")
    folder = args.folder
    if args.ir is None and folder is None:
        src = C.builtin_model_or_exit(args.model) if args.model == "builtin" else args.model
        folder = build(src, args.variant, args.smooth_quant, args.work / args.variant)
        run.data["built"] = {
            "model": src,
            "variant": args.variant,
            "folder": str(folder),
            "smooth_quant": args.smooth_quant if args.variant == "int8" else None,
        }
    precision = None
    if folder is not None:
        man = read_manifest(folder)
        stages = man.vision["stages"]
        if len(stages) != 1:
            sys.exit(f"{folder}: {len(stages)} vision stages; build it with --exits none (one unsplit IR)")
        ir = Path(folder) / stages[0]["file"]
        precision = "f32" if man.variant in ("fp32", "fp16") else None
        run.data["manifest"] = {
            "variant": man.variant,
            "source": man["source"],
            "smooth_quant_alpha": (man.get("quantization") or {}).get("smooth_quant_alpha"),
        }
    else:
        ir = args.ir
        precision = "f32" if args.variant == "fp32" else None
    model = ov.Core().read_model(str(ir))
    size = model.inputs[0].get_partial_shape()[-1].get_length()
    shape = [args.batch, 3, size, size]
    print(
        f"IR      : {ir} (input {model.inputs[0].get_partial_shape()}); timed as {shape}; "
        f"precision hint {precision or 'plugin default'}"
    )

    cmd = C.benchmark_app_command(exe, ir, shape, args.seconds, precision)
    print(f"bench   : {' '.join(cmd)}")

    # ovclip's engine on the same IR, static shape like benchmark_app
    static = ov.Core().read_model(str(ir))
    static.reshape({static.inputs[0].get_any_name(): ov.PartialShape(shape)})
    compiled = compile_model(static, "CPU", compile_config("CPU", "throughput", precision))
    nireq = C.optimal_nireq(compiled)
    batches = C.random_batches(args.batch, size)
    runners = {
        "benchmark_app": C.benchmark_app_timer(cmd, args.batch),
        "ovclip-engine": C.compiled_timer(compiled, batches, args.seconds),
    }
    facts = {
        "ovclip-engine": {
            "nireq": nireq,
            "executed_precision": C.executed_precision(compiled),
            "matmuls": C.runtime_matmuls(compiled),
            "shape": shape,
        }
    }
    if folder is not None:
        from ovclip.bench.runner import optimal_nireq
        from ovclip.runtime import Deployment

        dep = Deployment(folder, "CPU", hint="throughput", inference_precision=precision)
        dn = optimal_nireq(dep)
        facts["ovclip-deploy"] = {"nireq": dn, "executed_precision": dep.executed_precision(), "shape": "[?,3,S,S]"}
        runners["ovclip-deploy"] = C.deployment_timer(dep, batches, args.seconds, nireq=dn)
    speed = C.interleaved(runners, args.repeats)

    ref = speed["benchmark_app"]["median"]
    rows = []
    for name, s in speed.items():
        ratio = s["median"] / ref
        rows.append(
            {
                "engine": name,
                "fps": s["median"],
                "runs": " ".join(f"{x:.1f}" for x in s["runs"]),
                "ratio": ratio,
                "ok": "yes" if abs(ratio - 1) <= TOLERANCE else "NO",
                "nireq": s.get("nireq") or facts.get(name, {}).get("nireq"),
                "prec": s.get("inference_precision") or facts.get(name, {}).get("executed_precision"),
            }
        )
    run.data.update(
        ir=str(ir),
        shape=shape,
        precision_hint=precision,
        benchmark_app_command=" ".join(cmd),
        batch=args.batch,
        seconds=args.seconds,
        repeats=args.repeats,
        throughput=speed,
        facts=facts,
        rows=rows,
        tolerance=TOLERANCE,
    )
    print()
    print(
        C.table(
            rows,
            [
                ("engine", "engine", ""),
                ("fps", "img/s (median)", ".1f"),
                ("runs", "runs", ""),
                ("ratio", "/ benchmark_app", ".3f"),
                ("ok", f"within {TOLERANCE:.0%}", ""),
                ("nireq", "nireq", ""),
                ("prec", "precision", ""),
            ],
            title=f"{ir.name}, batch {args.batch}, THROUGHPUT hint, {args.seconds} s x {args.repeats}",
        )
    )
    bad = [r["engine"] for r in rows if r["ok"] == "NO"]
    run.data["agree"] = not bad
    print("\nagreement: " + ("all within tolerance" if not bad else f"OUTSIDE {TOLERANCE:.0%}: {', '.join(bad)}"))
    run.finish(args.json)


if __name__ == "__main__":
    main()
