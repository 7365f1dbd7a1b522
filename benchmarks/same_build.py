"""Are two deployment folders the same build? IR bytes, manifest, and per-sample behaviour on real images.

    python benchmarks/same_build.py OLD/int8 NEW/int8 [--data fashion-mnist:test]

1. md5 of every IR file (.xml, .bin) in both folders;
2. every manifest value that differs (library versions and build seconds left out);
3. with --data (a labelled set, as `ovclip bench --data` takes it): zero-shot top-1 at full depth and with the
   folder's early exit, the exit histogram, and how many images get another class or another exit block in
   the second folder than in the first.

Used for issue 11 (the refactor must write `out/int8` bit for bit, or the difference is measured here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

SKIPPED = ("/versions", "/quantization/seconds")


def ir_md5(folder: Path) -> dict[str, str]:
    files = [p for p in sorted(folder.iterdir()) if p.suffix in (".xml", ".bin")]
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def manifest_differences(a, b, path: str = "") -> list[str]:
    if path in SKIPPED:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(a) + [k for k in b if k not in a]
        return [d for k in keys for d in manifest_differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (u, v) in pairs for d in manifest_differences(u, v, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:60]} | {str(b)[:60]}"]


def behaviour(folder: Path, data, spec: str, batch: int = 250) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per image: predicted class and exit block, at full depth and with the folder's early exit."""
    from ovclip.data.prompts import prompt_templates, template_set_of
    from ovclip.runtime import Deployment

    dep = Deployment(folder, "CPU")
    classes = dep.class_embeddings(data.prompt_names, prompt_templates(template_set_of(spec)))
    out = {}
    for mode, early_exit in (("full depth", False), ("early exit", True)):
        preds, layers = [], []
        for i in range(0, len(data), batch):
            px = data.pixels(np.arange(i, min(i + batch, len(data))), dep.preprocess_config)
            o = dep.run_vision(px, classes, early_exit=early_exit)
            preds.append(o.scores.argmax(1))
            layers.append(o.exit_layer)
        out[mode] = (np.concatenate(preds), np.concatenate(layers))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--data", default=None, help="labelled images, e.g. fashion-mnist:test (10,000 images)")
    args = ap.parse_args()
    a, b = ir_md5(args.first), ir_md5(args.second)
    for name in sorted(set(a) | set(b)):
        print(f"{'same' if a.get(name) == b.get(name) else 'DIFF'}  {name:24s} {a.get(name)}  {b.get(name)}")
    print(f"IR files identical: {a == b} ({len(a)} files)")
    ma, mb = (json.loads((f / "manifest.json").read_text()) for f in (args.first, args.second))
    diffs = manifest_differences(ma, mb)
    print(f"manifest values that differ (versions and seconds left out): {len(diffs)}")
    for d in diffs:
        print("  ", d)
    if args.data is None:
        return
    from ovclip.data.datasets import open_dataset

    data = open_dataset(args.data)
    runs = [behaviour(f, data, args.data) for f in (args.first, args.second)]
    for mode in ("full depth", "early exit"):
        for f, run in zip((args.first, args.second), runs, strict=True):
            preds, layers = run[mode]
            hist = {int(k): int(v) for k, v in zip(*np.unique(layers, return_counts=True), strict=True)}
            top1 = 100 * np.mean(preds == data.labels)
            print(f"{mode:10s} {f}: top-1 {top1:.2f}% on {len(data)} images, exits {hist}")
        (p0, l0), (p1, l1) = runs[0][mode], runs[1][mode]
        other_class, other_exit = int(np.sum(p0 != p1)), int(np.sum(l0 != l1))
        print(f"{mode:10s} images with another class: {other_class}, another exit block: {other_exit}")


if __name__ == "__main__":
    main()
