"""What one training step of the built-in model's recipe costs here, and its preprocessing old vs new.

    python benchmarks/train_step_speed.py [--device cpu|cuda] [--precision fp32|bf16] [--repeats 5]

Times, in rotating rounds (medians), on a batch of 128 shipped Fashion-MNIST images:
- `pil`: preprocessing image by image with Pillow (`ovclip.preprocess_gray_batch`, what the recipe did before);
- `torch`: the same pixels from `ovclip.preprocess_torch` on `--device` (what the recipe does now);
- `step`: one whole training step of calibration/train_builtin.py (augment + preprocess + forward + backward +
  AdamW) on the real recipe's model.
Multiply `step` by the recipe's step count (10,104 for 24 epochs) for a full run's time on this machine.
Writes benchmarks/results/train_step_speed.json (or --json).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import _common as C
import numpy as np


def recipe():
    path = C.REPO / "calibration" / "train_builtin.py"
    spec = importlib.util.spec_from_file_location("train_builtin", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_builtin"] = mod
    spec.loader.exec_module(mod)
    return mod


def timer(fn, sync) -> dict:
    t = time.perf_counter()
    fn()
    sync()
    return {"throughput": 1.0 / (time.perf_counter() - t)}  # calls per second; seconds = 1 / median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    run = C.Run("train_step_speed")
    import torch

    from ovclip.data.builtin import load_npz
    from ovclip.preprocess import PreprocessConfig, preprocess_gray_batch
    from ovclip.preprocess_torch import TorchPreprocess

    R = recipe()
    torch.set_num_threads(C.cores())
    device = R.pick_device(args.device)
    spec, classes, templates = R.load_recipe()
    images, labels, _ = load_npz("calibration_fashion_mnist_train6000.npz")
    bs = spec["train"]["batch_size"]
    data = R.make_data(spec, classes, templates, images, labels, images[:256], labels[:256], device)
    work = Path(C.RESULTS / "_train_step_speed_work")
    r = R.Run(spec, data, device, args.precision, work, stop_after=1, save_every=10**9, log=lambda m: None)
    model = R.build_model(spec, spec["train"]["seed"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = PreprocessConfig()
    prep = TorchPreprocess(28, 28, cfg, device)
    batch_np, batch_t = images[:bs], data.train_x[:bs]
    order = np.arange(len(images))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step = {"n": 0}

    def one_step():
        R.train_step(model, opt, r, step["n"], 10_000, order, prep)
        step["n"] += 1

    runners = {
        "pil": lambda: timer(lambda: preprocess_gray_batch(batch_np, cfg), sync),
        "torch": lambda: timer(lambda: prep.gray(batch_t), sync),
        "step": lambda: timer(one_step, sync),
    }
    one_step()  # warm-up
    got = C.interleaved(runners, args.repeats, log=lambda m: print(m, flush=True))
    seconds = {k: 1.0 / v["median"] for k, v in got.items()}
    steps = (54_000 // bs) * spec["train"]["epochs"]
    run.data.update(device=str(device), precision=args.precision, batch=bs, seconds_median=seconds, rounds=got)
    run.data["full_run_hours_estimate"] = seconds["step"] * steps / 3600
    print(f"\nbatch {bs} on {device} ({args.precision}), medians of {args.repeats} rounds:")
    print(f"  preprocessing, Pillow image by image : {seconds['pil'] * 1000:8.1f} ms")
    print(f"  preprocessing, torch batch           : {seconds['torch'] * 1000:8.1f} ms")
    print(f"  one training step (all of it)        : {seconds['step'] * 1000:8.1f} ms")
    print(f"  {steps:,} steps ({spec['train']['epochs']} epochs): ~{run.data['full_run_hours_estimate']:.1f} h here")
    run.finish(args.json)


if __name__ == "__main__":
    main()
