"""The machine's limit: OpenVINO MatMuls of a checkpoint's shapes, FP32 (f32 hint), bf16 (where the CPU
has it) and INT8 (NNCF-quantized, as ovclip quantizes), in GFLOP/s / GOP/s; medians of repeats.

    python benchmarks/matmul_limit.py                                   # random:vit-b-32 (+ builtin if built)
    python benchmarks/matmul_limit.py --model /tmp/ckpt_mid --seconds 5 --repeats 5
    python benchmarks/matmul_limit.py --model random:vit-b-32 --attained int8=81 --attained f32=22

Per ViT block the weight MatMuls are q, k, v, out (T x D @ D x D) and the MLP (T x D @ D x M, T x M @ M x D),
batch B. Each is timed as a chain of MatMuls of that shape in one IR (`qkvo`: D->D repeated; `mlp`: D->M->D
repeated, i.e. the MLP without its activation), enough of them that one inference is about a GFLOP, with
the THROUGHPUT hint and the optimal number of requests in flight (ovclip's timing engine, benchmark_app's
method). `mix` is the rate of one block's weight MatMuls (FLOP-weighted harmonic mean of qkvo and mlp);
attention's T x T products (about 1% of a ViT-B/32 block) are left out.
INT8 = `nncf.quantize(model_type=TRANSFORMER)` with SmoothQuant off, exactly ovclip's call; the number
of MatMuls the CPU plugin really runs in INT8 is read back from the compiled model and printed.

`--attained PRECISION=IMG_S` turns a variant's measured img/s into the fraction of the limit it reaches:
FLOPs per image (ovclip.policy.flops.full_depth_flops) x img/s / mix rate of that precision.
Writes benchmarks/results/matmul_limit.json (or --json).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import _common as C
import numpy as np

TARGET_FLOPS = 1.0e9  # per inference and sample-batch, so the Python call costs nothing next to it
MAX_CHAIN = 32


# --- shapes -------------------------------------------------------------------------------------------


def vision_of(src: str) -> tuple[dict, int, str]:
    """(vision dict as in a manifest, embedding dim, description) of a checkpoint."""
    from ovclip.checkpoint import load_checkpoint

    ck = load_checkpoint(src)
    vc = ck.model.config.vision_config
    tokens = (vc.image_size // vc.patch_size) ** 2 + 1
    vision = {
        "num_layers": vc.num_hidden_layers,
        "hidden_size": vc.hidden_size,
        "intermediate_size": vc.intermediate_size,
        "image_size": vc.image_size,
        "patch_size": vc.patch_size,
        "tokens": tokens,
    }
    return vision, int(ck.model.config.projection_dim), ck.description


def kinds(vision: dict) -> dict[str, dict]:
    """The two MatMul chains of a block: per-sample FLOPs of one link and of the block's share."""
    t, d, m = vision["tokens"], vision["hidden_size"], vision["intermediate_size"]
    return {
        "qkvo": {
            "dims": [d, d],
            "link_flops": 2 * t * d * d,
            "block_flops": 4 * 2 * t * d * d,
            "shape": f"{t}x{d} @ {d}x{d}",
        },
        "mlp": {
            "dims": [d, m, d],
            "link_flops": 2 * t * d * m * 2,
            "block_flops": 2 * 2 * t * d * m,
            "shape": f"{t}x{d} @ {d}x{m}, {t}x{m} @ {m}x{d}",
        },
    }


def chain_model(tokens: int, dims: list[int], links: int, batch: int, seed: int = 0):
    """x (batch, tokens, dims[0]) -> MatMul(dims[0]->dims[1]) -> ... repeated `links` times -> result."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(seed)
    x = ops.parameter([batch, tokens, dims[0]], ov.Type.f32, name="x")
    h = x
    for _ in range(links):
        for a, b in zip(dims[:-1], dims[1:], strict=False):
            w = (rng.standard_normal((b, a)) / math.sqrt(a)).astype(np.float32)  # Linear layout: (out, in)
            h = ops.matmul(h, ops.constant(w), transpose_a=False, transpose_b=True)
    return ov.Model([ops.result(h)], [x], "matmul_chain")


def quantize_int8(model, tokens: int, dim: int, batch: int):
    """ovclip's NNCF call (model_type TRANSFORMER, SmoothQuant off) on a few random activations."""
    from ovclip.quantize.config import QuantizationConfig
    from ovclip.quantize.nncf_stages import quantize_model

    rng = np.random.default_rng(1)
    items = [rng.standard_normal((batch, tokens, dim), dtype=np.float32) for _ in range(4)]
    return quantize_model(model, items, QuantizationConfig(subset_size=4, smooth_quant_alpha=None), None)


def int8_matmuls(compiled) -> tuple[int, int]:
    """(MatMul/FullyConnected nodes the plugin runs in i8/u8, all of them) in a compiled model."""
    r = C.runtime_matmuls(compiled)
    return r["int8"], r["total"]


# --- timing -------------------------------------------------------------------------------------------


def compile_for(model, precision: str):
    import openvino.properties.hint as hints

    from ovclip.runtime.device import compile_config, compile_model

    cfg = compile_config("CPU", "throughput", {"f32": "f32", "bf16": "bf16", "int8": None}[precision])
    cfg.setdefault(hints.performance_mode, hints.PerformanceMode.THROUGHPUT)
    return compile_model(model, "CPU", cfg)


def precisions_here(requested: list[str]) -> tuple[list[str], dict[str, str]]:
    from ovclip.runtime.device import supports_bf16

    out, skipped = [], {}
    for p in requested:
        if p == "bf16" and not supports_bf16("CPU"):
            skipped[p] = "not supported on this CPU (OpenVINO's OPTIMIZATION_CAPABILITIES has no BF16)"
            continue
        out.append(p)
    return out, skipped


def limit_runners(vision: dict, batch: int, seconds: float, precisions: list[str], tag: str = "", log=print):
    """{name: runner} timing every (kind, precision) MatMul chain; runner() -> {'throughput': G(FL)OP/s}.

    Also returns facts per name (shape, chain length, INT8 node counts, executed precision).
    """
    runners, facts = {}, {}
    t = vision["tokens"]
    for kind, k in kinds(vision).items():
        links = max(1, min(MAX_CHAIN, round(TARGET_FLOPS / (k["link_flops"] * batch))))
        base = chain_model(t, k["dims"], links, batch)
        per_sample = k["link_flops"] * links
        rng = np.random.default_rng(2)
        batches = [rng.standard_normal((batch, t, k["dims"][0]), dtype=np.float32) for _ in range(2)]
        for p in precisions:
            model = quantize_int8(base, t, k["dims"][0], batch) if p == "int8" else base
            compiled = compile_for(model, p)
            q, n = int8_matmuls(compiled)
            name = f"{tag}{kind}-{p}"
            facts[name] = {
                "kind": kind,
                "precision": p,
                "shape": k["shape"],
                "batch": batch,
                "chain_links": links,
                "matmuls": n,
                "matmuls_int8": q,
                "executed_precision": C.executed_precision(compiled),
                "nireq": C.optimal_nireq(compiled),
                "flops_per_inference": per_sample * batch,
            }
            if p == "int8" and q < n:
                log(f"WARNING: {name}: only {q} of {n} MatMuls run in INT8")
            runners[name] = C.compiled_timer(compiled, batches, seconds, share_outputs=True, per_sample=per_sample)
    return runners, facts


def mix_rates(vision: dict, speed: dict[str, dict], precisions: list[str], tag: str = "") -> dict[str, float]:
    """Per precision, G(FL)OP/s of one block's weight MatMuls: sum of FLOPs / sum of FLOPs / rate."""
    out = {}
    ks = kinds(vision)
    for p in precisions:
        total = sum(k["block_flops"] for k in ks.values())
        time_ = sum(k["block_flops"] / speed[f"{tag}{kind}-{p}"]["median"] for kind, k in ks.items())
        out[p] = total / time_
    return out


def attained(img_s: float, flops_per_image: float, rate_gops: float) -> float:
    return img_s * flops_per_image / (rate_gops * 1e9)


# --- command ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        action="append",
        default=None,
        help="checkpoint(s) whose shapes to time (repeatable); default random:vit-b-32 and builtin if built",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", action="append", default=None, help="f32, bf16, int8 (default: all three)")
    ap.add_argument(
        "--attained",
        action="append",
        default=[],
        metavar="PRECISION=IMG_S",
        help="a variant's measured img/s (with one --model): print the fraction of the limit it reaches",
    )
    ap.add_argument("--flops-per-image", type=float, default=None, help="override FLOPs per image for --attained")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    run = C.Run("matmul_limit")
    notes = []
    models = args.model
    if models is None:
        from ovclip.checkpoint.sources import BUILTIN_MODEL_DIR

        models = ["random:vit-b-32"]
        if (BUILTIN_MODEL_DIR / "config.json").is_file():
            models.append("builtin")
        else:
            notes.append("builtin model not built yet: skipped (pass --model DIR for another checkpoint)")
    models = [C.builtin_model_or_exit(m) if m == "builtin" else m for m in models]
    if args.attained and len(models) != 1:
        sys.exit("--attained needs exactly one --model")
    precisions, skipped = precisions_here(args.precision or ["f32", "bf16", "int8"])
    for p, why in skipped.items():
        notes.append(f"{p}: {why}")
    for n in notes:
        print(f"note    : {n}")

    runners, facts, shapes = {}, {}, {}
    for i, m in enumerate(models):
        vision, emb, desc = vision_of(m)
        from ovclip.policy.flops import full_depth_flops

        tag = f"m{i}:" if len(models) > 1 else ""
        shapes[m] = {
            "vision": vision,
            "embedding_dim": emb,
            "description": desc,
            "tag": tag,
            "flops_per_image": full_depth_flops(vision, emb),
        }
        print(f"model   : {tag}{m}: {desc}; {shapes[m]['flops_per_image'] / 1e9:.3f} GFLOP per image")
        r, f = limit_runners(vision, args.batch, args.seconds, precisions, tag)
        runners.update(r)
        facts.update(f)
    C.print_timing(f"batch {args.batch}, {args.seconds} s x {args.repeats} rounds, THROUGHPUT hint, optimal nireq")
    speed = C.interleaved(runners, args.repeats)

    rows = []
    for name, f in facts.items():
        rows.append(
            {
                "name": name,
                "shape": f["shape"],
                "links": f["chain_links"],
                "prec": f["executed_precision"]
                if f["precision"] != "int8"
                else f"int8 ({f['matmuls_int8']}/{f['matmuls']})",
                "rate": speed[name]["median"],
                "spread": 100 * speed[name]["spread"],
                "nireq": f["nireq"],
            }
        )
    mixes = {}
    for m, s in shapes.items():
        mixes[m] = mix_rates(s["vision"], speed, precisions, s["tag"])
        for p, v in mixes[m].items():
            rows.append({"name": f"{s['tag']}mix-{p}", "shape": "one block's weight MatMuls", "rate": v})
    print()
    print(
        C.table(
            rows,
            [
                ("name", "matmul", ""),
                ("shape", "shape (per sample)", ""),
                ("links", "chain", ""),
                ("prec", "runs in", ""),
                ("nireq", "nireq", ""),
                ("rate", "G(FL)OP/s median", ".1f"),
                ("spread", "spread %", ".1f"),
            ],
            title=f"batch {args.batch}",
        )
    )
    if "f32" in precisions and "int8" in precisions:
        for m, mix in mixes.items():
            print(f"{m}: INT8 / f32 MatMul rate = {mix['int8'] / mix['f32']:.2f}x")

    out_att = []
    for a in args.attained:
        p, _, v = a.partition("=")
        if p not in mixes[models[0]]:
            sys.exit(f"--attained {a}: precision {p!r} not measured (have {', '.join(mixes[models[0]])})")
        fpi = args.flops_per_image or shapes[models[0]]["flops_per_image"]
        frac = attained(float(v), fpi, mixes[models[0]][p])
        out_att.append(
            {
                "precision": p,
                "img_s": float(v),
                "flops_per_image": fpi,
                "limit_gops": mixes[models[0]][p],
                "fraction": frac,
            }
        )
        print(
            f"attained: {p} at {float(v):.1f} img/s x {fpi / 1e9:.3f} GFLOP = {float(v) * fpi / 1e9:.1f} G(FL)OP/s "
            f"= {100 * frac:.1f}% of the {p} MatMul limit ({mixes[models[0]][p]:.1f})"
        )
    run.data.update(
        notes=notes,
        models=shapes,
        batch=args.batch,
        seconds=args.seconds,
        repeats=args.repeats,
        precisions=precisions,
        skipped=skipped,
        matmuls=facts,
        rates=speed,
        mix=mixes,
        attained=out_att,
    )
    run.finish(args.json)


if __name__ == "__main__":
    main()
