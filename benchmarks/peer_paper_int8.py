"""The paper's INT8 as a peer: torch `quantize_dynamic` on the vision tower's Linear layers, vs torch FP32.

    python benchmarks/peer_paper_int8.py                       # the built-in model, built-in eval set (2,000)
    python benchmarks/peer_paper_int8.py --model /tmp/ckpt_mid --data fashion-mnist:test
    python benchmarks/peer_paper_int8.py --model random:vit-b-32   # random weights: speed only

Both variants share one set of class embeddings (FP32 text tower, ovclip's prompts ensembled over the
eval templates) and ovclip's preprocessing, so only the image tower differs. Throughput: batch 8,
torch threads = cores, one stream, ovclip's timing engine, `--repeats` interleaved rounds; medians.
Writes benchmarks/results/peer_paper_int8.json (or --json).
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import _common as C
import numpy as np


def build_towers(clip):
    import torch
    from torch import nn

    class VisionTower(nn.Module):
        """pixel_values -> image embedding: CLIP's vision_model (pooled, post-LN) + visual_projection."""

        def __init__(self, clip):
            super().__init__()
            self.vision_model = clip.vision_model
            self.visual_projection = clip.visual_projection

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    fp32 = VisionTower(clip).eval()
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao; still the paper's
        warnings.simplefilter("ignore")
        int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8).eval()
    return fp32, int8


def count_dynamic_linear(module) -> tuple[int, int]:
    from torch import nn

    q = sum(1 for m in module.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__)
    f = sum(1 for m in module.modules() if type(m) is nn.Linear)
    return q, f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin", help="checkpoint (any ovclip --model SRC); default: builtin")
    ap.add_argument("--data", default="builtin", help="eval set (ovclip open_dataset spec); default: builtin (2,000)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (smoke tests)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; medians are reported")
    ap.add_argument("--pool", type=int, default=256, help="real images cycled through in the timed runs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    run = C.Run("peer_paper_int8", extra_packages=())
    import torch

    from ovclip.checkpoint import load_checkpoint
    from ovclip.data.datasets import open_dataset
    from ovclip.data.prompts import builtin_templates

    threads = args.threads or C.cores()
    torch.set_num_threads(threads)
    src = C.builtin_model_or_exit(args.model) if args.model == "builtin" else args.model
    ck = load_checkpoint(src)
    clip = ck.model.eval()
    fp32, int8 = build_towers(clip)
    nq, nf = count_dynamic_linear(int8)
    print(f"model   : {ck.description} ({ck.source}); trained={ck.trained}")
    print(
        f"int8    : quantize_dynamic qint8: {nq} Linear layers quantized, {nf} left float; "
        f"engine {torch.backends.quantized.engine}; torch threads {threads}"
    )
    run.data.update(
        model=ck.source,
        model_description=ck.description,
        trained=ck.trained,
        torch_threads=threads,
        quantized_engine=torch.backends.quantized.engine,
        int8_linear_layers=nq,
        float_linear_layers_left=nf,
        batch=args.batch,
        seconds=args.seconds,
        repeats=args.repeats,
    )

    data = open_dataset(args.data)
    cfg = ck.preprocess
    n_eval = min(len(data), args.limit or len(data))

    def vision(module):
        def f(px: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(np.ascontiguousarray(px))).numpy()

        return f

    rows = []
    accuracy: dict[str, dict] = {}
    if ck.trained:
        templates = builtin_templates("eval")

        def encode_text(prompts: list[str]) -> np.ndarray:
            with torch.inference_mode():
                ids = torch.from_numpy(ck.tokenizer(prompts))
                out = clip.get_text_features(input_ids=ids)
                out = out if isinstance(out, torch.Tensor) else out.pooler_output
                return out.numpy()

        cls = C.class_embeddings(encode_text, data.prompt_names, templates)
        print(f"eval    : {n_eval:,} images of {data.source}; {len(templates)} templates ensembled")
        emb = {}
        for name, mod in (("torch-fp32", fp32), ("torch-int8-dynamic", int8)):
            emb[name] = C.embed_all(vision(mod), data, cfg, n_eval)
            accuracy[name] = {"top1": C.top1(emb[name], cls, data.labels[:n_eval]), "n_images": n_eval}
        cos = float(np.mean(np.sum(C.l2n(emb["torch-fp32"]) * C.l2n(emb["torch-int8-dynamic"]), axis=1)))
        accuracy["torch-int8-dynamic"]["mean_cosine_to_fp32"] = cos
    else:
        print("eval    : random weights: accuracy is meaningless, speed only")

    pool = C.image_batches(data.pixels(np.arange(min(len(data), max(args.pool, args.batch))), cfg), args.batch)
    runners = {}
    for name, mod in (("torch-fp32", fp32), ("torch-int8-dynamic", int8)):
        runners[name] = C.function_timer(vision(mod), pool, args.seconds)
    C.print_timing(f"batch {args.batch}, {args.seconds} s x {args.repeats} rounds, 1 stream x {threads} threads")
    speed = C.interleaved(runners, args.repeats)

    base = speed["torch-fp32"]["median"]
    for name in ("torch-fp32", "torch-int8-dynamic"):
        acc = accuracy.get(name, {})
        rows.append(
            {
                "variant": name,
                "top1": None if not acc else 100 * acc["top1"],
                "cos": acc.get("mean_cosine_to_fp32"),
                "fps": speed[name]["median"],
                "x": speed[name]["median"] / base,
                "spread": 100 * speed[name]["spread"],
                "lat": speed[name]["latency_median_ms"],
            }
        )
    run.data.update(eval_set=data.source, n_eval=n_eval if ck.trained else 0, accuracy=accuracy, throughput=speed)
    run.data["rows"] = rows
    print()
    print(
        C.table(
            rows,
            [
                ("variant", "variant", ""),
                ("top1", "top-1 %", ".2f"),
                ("cos", "cos to FP32", ".5f"),
                ("fps", "img/s (median)", ".1f"),
                ("x", "x FP32", ".2f"),
                ("spread", "spread %", ".1f"),
                ("lat", "batch ms", ".1f"),
            ],
            title=f"{ck.description}" + ("" if ck.trained else " -- random weights, speed only"),
        )
    )
    run.finish(args.json)


if __name__ == "__main__":
    main()
