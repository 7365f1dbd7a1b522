"""The paper's table on your machine: FP32, the paper's INT8, ovclip INT8, ovclip INT8 + early exit.

    python benchmarks/paper_table.py --model openai/clip-vit-base-patch32 \\
        --data IMAGENET_VAL --calibration IMAGENET_TRAIN_SUBSET [--limit 10000]
    python benchmarks/paper_table.py --model random:vit-b-32 --data TREE --calibration TREE --templates simple

IMAGENET_VAL and IMAGENET_TRAIN_SUBSET are folders in the ImageNet layout (one folder per class, named by
WordNet id, `n01440764` ...; ImageNet's `val/` after the usual re-foldering, and e.g. 10 images per class of
`train/`): ovclip reads them with the standard CLIP class names (`ovclip.data.imagenet`). The calibration
folder must not share images with the evaluation folder.

What runs, all on this machine, with the library (no CLI subprocesses):
1. `export_deployment`: the FP32 OpenVINO folder (one unsplit vision IR);
2. `quantize_deployment`: ovclip's INT8 folder (NNCF, SmoothQuant alpha chosen on held-out calibration
   images) with early exit (exit heads, gate and thresholds calibrated on `--calibration`);
3. the paper's INT8: torch `quantize_dynamic` (qint8) on every Linear layer of the vision tower, text tower
   unchanged (benchmarks/peer_paper_int8.py builds it);
4. one pass over `--data` (each image preprocessed once, every variant run on it): zero-shot top-1 against the
   prompt-ensembled class names (OpenAI's 80 ImageNet templates by default), FLOPs per image (ovclip's count:
   vision stem + blocks, + exit heads for early exit), the exit distribution, and the paper's rescue table
   (early exit right/wrong vs ovclip INT8 at full depth);
5. throughput: batch `--batch`, `--repeats` interleaved rounds of `--seconds` each, medians (OpenVINO
   variants at their optimal number of requests, torch from one thread with all cores).

The paper's published figures (ImageNet-1k val, ViT-B/32; /work/shared/paper-notes.md) are printed beside.
With random weights (`random:*`) every accuracy and rescue figure is null with the reason; speed, FLOPs
and the exit distribution are still measured (the exits of random heads mean nothing either).
Writes benchmarks/results/paper_table.json (or --json).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _common as C
import numpy as np

RANDOM_REASON = "random weights: accuracy is meaningless, speed only"
# The paper (arXiv 2605.26415v1): Table 1 (INT8 full depth, LRA-EE), Fig. 2b (exit distribution), Table 4
# (rescue/loss on its 10,000-image subset). It reports no FP32 accuracy and no speed.
PAPER = {
    "fp32": {"note": "not reported by the paper (third-party notes quote ~63.3 for ViT-B/32)"},
    "paper-int8": {"top1": 58.72, "flops_saving": 0.0, "note": "Table 1, INT8 full depth"},
    "ovclip-int8": {"note": "not in the paper (its INT8 is torch dynamic)"},
    "ovclip-int8-ee": {
        "top1": 61.16,
        "flops_saving": 13.38,
        "exits": {"8": 10.1, "10": 25.3, "11": 32.1, "full": 32.5},
        "rescue": 9.5,
        "loss": 7.1,
        "note": "LRA-EE: Table 1 (61.16 +/- 0.06 at 13.38 +/- 0.11 % FLOPs), Fig. 2b exits, Table 4 rescue/loss",
    },
}
ROWS = (
    ("fp32", "FP32 (OpenVINO IR, f32)"),
    ("paper-int8", "paper INT8 (torch quantize_dynamic, vision Linear)"),
    ("ovclip-int8", "ovclip INT8 (NNCF, exits off)"),
    ("ovclip-int8-ee", "ovclip INT8 + early exit"),
)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="any ovclip --model SRC (HF id or folder, state dict, random:*)")
    ap.add_argument("--data", required=True, help="evaluation images (ImageNet layout, or any ovclip data spec)")
    ap.add_argument("--calibration", required=True, help="calibration images (ImageNet layout, disjoint from --data)")
    ap.add_argument("--templates", default="openai", choices=("openai", "simple"), help="ImageNet template set")
    ap.add_argument("--limit", type=int, help="evaluate a seeded random subset of this many images (paper: 10,000)")
    ap.add_argument("--flops-budget", type=float, default=None, help="early-exit FLOPs budget (default 0.85)")
    ap.add_argument("--smooth-quant", default="auto", help="SmoothQuant alpha for ovclip INT8: auto, off or a number")
    ap.add_argument("--subset-size", type=int, default=300, help="calibration images for NNCF statistics")
    ap.add_argument(
        "--head-epochs", default=None, help="exit-head training lengths to choose from, e.g. 100,200,400 (default)"
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per variant and round")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; medians are reported")
    ap.add_argument("--pool", type=int, default=256, help="evaluation images cycled through in the timed runs")
    ap.add_argument("--out", type=Path, help="keep the deployment folders here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args()


def template_choice(data_spec: str, kind: str) -> tuple[str, list[str]]:
    """(template set name, templates) for the evaluation data: an ImageNet-layout folder gets OpenAI's 80
    ImageNet templates (`--templates simple`: their 7-template subset); other data what `ovclip bench` uses."""
    from ovclip.data.prompts import prompt_templates, template_set_of

    name = template_set_of(data_spec)
    if name == "imagenet" and kind == "simple":
        name = "imagenet-simple"
    return name, prompt_templates(name)


def load_data(args):
    from ovclip.data.datasets import open_dataset

    val, calib = open_dataset(args.data), open_dataset(args.calibration)
    if args.limit and args.limit < len(val):
        pick = np.sort(np.random.default_rng(0).choice(len(val), args.limit, replace=False))
        val = val.subset(pick, source=f"{val.source}, seeded random subset of {args.limit:,}")
    return val, calib


def build_folders(ckpt, calib, out: Path, template_set: str, args, progress) -> tuple[Path, Path]:
    """The FP32 folder (export) and ovclip's INT8 folder with early exit (quantize), both through the library."""
    from ovclip.exits.config import ExitBuildConfig
    from ovclip.exits.heads import HeadTrainConfig
    from ovclip.export import ExportOptions, export_deployment
    from ovclip.quantize.config import QuantizationConfig
    from ovclip.quantize.pipeline import quantize_deployment

    fp32, int8 = out / "fp32", out / "int8"
    export_deployment(ckpt, fp32, ExportOptions(exits="none"))
    head = HeadTrainConfig()
    if args.head_epochs:
        head = HeadTrainConfig(epoch_candidates=tuple(int(e) for e in args.head_epochs.split(",")))
    ee = ExitBuildConfig(flops_budget=args.flops_budget, templates=template_set, head=head)
    qcfg = QuantizationConfig(
        subset_size=args.subset_size, smooth_quant_alpha=QuantizationConfig.parse_alpha(args.smooth_quant)
    )
    quantize_deployment(ckpt, int8, calib, qcfg, early_exit=ee, progress=progress)
    return fp32, int8


def torch_vision(module):
    import torch

    def run(px: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(px))).numpy()

    return run


def evaluate(deps: dict, paper_int8, val, classes: dict, cfg, chunk: int = 64) -> dict:
    """One pass over `val`: per variant the top-1/top-5 correctness (where there are class embeddings to score
    against); for early exit the exit blocks."""
    got = {name: {"correct": [], "top5": [], "exit_layer": []} for name, _ in ROWS}
    for i in range(0, len(val), chunk):
        idx = np.arange(i, min(i + chunk, len(val)))
        px, labels = val.pixels(idx, cfg), val.labels[idx]
        outs = {
            "fp32": deps["fp32"].run_vision(px, classes["fp32"], early_exit=False),
            "ovclip-int8": deps["int8"].run_vision(px, classes["int8"], early_exit=False),
            "ovclip-int8-ee": deps["int8"].run_vision(px, classes["int8"], early_exit=True),
        }
        scores = {name: o.scores for name, o in outs.items()}
        if classes["fp32"] is not None:
            scores["paper-int8"] = C.l2n(paper_int8(px)) @ classes["fp32"].T
        for name, s in scores.items():
            if s is None:
                continue
            top5 = np.argsort(-s, axis=1)[:, :5]
            got[name]["correct"].append(top5[:, 0] == labels)
            got[name]["top5"].append((top5 == labels[:, None]).any(axis=1))
        got["ovclip-int8-ee"]["exit_layer"].append(outs["ovclip-int8-ee"].exit_layer)
    out = {n: {k: np.concatenate(v) if v else None for k, v in d.items()} for n, d in got.items()}
    for d in out.values():
        d["n"] = len(val)
    return out


def row_metrics(name: str, res: dict, dep, trained: bool, n_classes: int) -> dict:
    from ovclip.bench.metrics import exit_histogram
    from ovclip.policy.flops import full_depth_flops, mean_flops

    emb = int(dep.manifest["embedding_dim"])
    full = full_depth_flops(dep.vision, emb)
    row = {"variant": name, "n_images": res["n"], "flops_per_image": full, "flops_saving": 0.0}
    row.update(top1=None, top5=None, accuracy_note=RANDOM_REASON, exit_share=None, rescue=None)
    if trained:
        row.update(top1=float(res["correct"].mean()), top5=float(res["top5"].mean()), accuracy_note=None)
    if res["exit_layer"] is not None:
        el, exits = res["exit_layer"], dep.policy.exits
        row["flops_per_image"] = mean_flops(dep.vision, emb, el, exits, n_classes)
        row["flops_saving"] = 1 - row["flops_per_image"] / full
        hist = exit_histogram(el, exits, dep.num_layers)
        row["exit_share"] = {("full" if int(k) == dep.num_layers else k): v / len(el) for k, v in hist.items()}
    return row


def add_rescue(rows: dict, res: dict, trained: bool) -> None:
    from ovclip.bench.metrics import rescue_quadrants

    if trained:
        rows["ovclip-int8-ee"]["rescue"] = rescue_quadrants(
            res["ovclip-int8-ee"]["correct"], res["ovclip-int8"]["correct"]
        )


def speed(deps: dict, paper_int8, classes: dict, pool, args) -> dict:
    runners = {
        "fp32": C.deployment_timer(deps["fp32"], pool, args.seconds),
        "paper-int8": C.function_timer(paper_int8, pool, args.seconds),
        "ovclip-int8": C.deployment_timer(deps["int8"], pool, args.seconds, class_emb=classes["int8"]),
        "ovclip-int8-ee": C.deployment_timer(
            deps["int8"], pool, args.seconds, class_emb=classes["int8"], early_exit=True
        ),
    }
    C.print_timing(f"batch {args.batch}, {args.seconds} s x {args.repeats} rounds, interleaved")
    return C.interleaved(runners, args.repeats)


def _pct(v, digits: int = 2) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}"


def _exits(share: dict | None, scale: float = 100.0) -> str:
    if not share:
        return "—"
    return " / ".join(f"{'full' if k == 'full' else 'L' + k} {scale * v:.1f}" for k, v in share.items())


def print_table(rows: dict, title: str) -> None:
    out = []
    for key, label in ROWS:
        r, p = rows[key], PAPER[key]
        q = r.get("rescue")
        out.append(
            {
                "method": label,
                "top1": _pct(r["top1"]),
                "paper_top1": p.get("top1", "—"),
                "gflops": r["flops_per_image"] / 1e9,
                "saving": _pct(r["flops_saving"], 1),
                "paper_saving": p.get("flops_saving", "—"),
                "exits": _exits(r["exit_share"]),
                "paper_exits": _exits({k: v / 100 for k, v in p["exits"].items()}) if "exits" in p else "—",
                "rescue": "—" if not q else f"{100 * q['rescue'] / q['n']:.1f} / {100 * q['loss'] / q['n']:.1f}",
                "paper_rescue": f"{p['rescue']} / {p['loss']}" if "rescue" in p else "—",
                "fps": r["throughput"],
                "x": r["x_fp32"],
            }
        )
    cols = [
        ("method", "method", ""),
        ("top1", "top-1 %", ""),
        ("paper_top1", "paper", ""),
        ("gflops", "GFLOP/img", ".3f"),
        ("saving", "FLOPs saved %", ""),
        ("paper_saving", "paper", ""),
        ("exits", "exits % (ovclip)", ""),
        ("paper_exits", "exits % (paper)", ""),
        ("rescue", "rescue / loss %", ""),
        ("paper_rescue", "paper", ""),
        ("fps", "img/s", ".1f"),
        ("x", "x FP32", ".2f"),
    ]
    print(C.table(out, cols, title=title))


def measure(ckpt, val, calib, out: Path, args, progress) -> dict:
    """Build the folders, evaluate every variant in one pass over `val`, time them; the rows and facts."""
    from peer_paper_int8 import build_towers, count_dynamic_linear

    from ovclip.runtime import Deployment

    template_set, templates = template_choice(args.data, args.templates)
    print(f"data    : {val.source}; {len(templates)} templates ({template_set})")
    print(f"calib   : {calib.source}", flush=True)
    fp32_dir, int8_dir = build_folders(ckpt, calib, out, template_set, args, progress)
    deps = {"fp32": Deployment(fp32_dir), "int8": Deployment(int8_dir)}
    print(f"exits   : blocks {deps['int8'].policy.exits} ({deps['int8'].policy.rule})", flush=True)
    # the INT8 folder's class embeddings drive its exits; the FP32 folder's are only needed to score accuracy
    classes = {"int8": deps["int8"].class_embeddings(val.prompt_names, templates), "fp32": None}
    if ckpt.trained:
        classes["fp32"] = deps["fp32"].class_embeddings(val.prompt_names, templates)
    _, int8_tower = build_towers(ckpt.model.eval())
    paper_int8 = torch_vision(int8_tower)
    res = evaluate(deps, paper_int8, val, classes, ckpt.preprocess)
    dep_of = {"fp32": deps["fp32"], "paper-int8": deps["fp32"]}
    rows = {k: row_metrics(k, res[k], dep_of.get(k, deps["int8"]), ckpt.trained, val.num_classes) for k, _ in ROWS}
    add_rescue(rows, res, ckpt.trained)
    n_pool = min(len(val), max(args.pool, args.batch))
    pool = C.image_batches(val.pixels(np.arange(n_pool), ckpt.preprocess), args.batch)
    timing = speed(deps, paper_int8, classes, pool, args)
    for k, r in rows.items():
        r.update(throughput=timing[k]["median"], throughput_runs=timing[k]["runs"])
        r["x_fp32"] = timing[k]["median"] / timing["fp32"]["median"]
    q, f = count_dynamic_linear(int8_tower)
    return {
        "template_set": template_set,
        "templates": len(templates),
        "exit_policy": deps["int8"].manifest.get("exit_policy"),
        "quantization": deps["int8"].manifest.get("quantization"),
        "paper_int8_linear_layers": {"quantized": q, "float": f},
        "rows": rows,
    }


def main() -> None:
    args = parse()
    run = C.Run("paper_table")
    import torch

    from ovclip.checkpoint import load_checkpoint
    from ovclip.progress import notes_to

    torch.set_num_threads(C.cores())
    ckpt = load_checkpoint(args.model)
    print(f"model   : {ckpt.description}; trained={ckpt.trained}")
    val, calib = load_data(args)
    out = args.out or Path(tempfile.mkdtemp(prefix="paper_table-"))
    try:
        facts = measure(ckpt, val, calib, out, args, notes_to(lambda m: print(f"          {m}", flush=True)))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    run.data.update(
        model=ckpt.source, trained=ckpt.trained, data=val.source, n_images=len(val), calibration=calib.source,
        batch=args.batch, seconds=args.seconds, repeats=args.repeats, paper=PAPER, **facts,
    )  # fmt: skip
    print()
    note = "" if ckpt.trained else f" -- {RANDOM_REASON}"
    print_table(facts["rows"], f"{ckpt.description} on {len(val):,} images{note}")
    run.finish(args.json)


if __name__ == "__main__":
    main()
