"""The paper's QIRC measurements (§3, §6.4) per vision block, FP32 vs INT8 folders of one checkpoint.

For every block L (1-based; "block 0" is the pre-LayerNorm'd embeddings entering block 1) on the same
real images, with z_L the block's output read by IR surgery (see `surgery.py`), both folders compiled f32:

- NSR (Eq. 1): mean over images of ||z_L^INT8 - z_L^FP32|| / ||z_L^FP32 - z_{L-1}^FP32||. The paper does
  not say which token z_L is; it is measured on three: the patch-token mean (what the SSA exit heads read,
  ovclip's choice), the CLS token, and all tokens flattened.
- INR (Eq. 5, `ovclip.policy.inr.inr`): ||E_x z_L||^2 / sum Var_x(eps_L), on the patch mean and on CLS.
- MSE of the activations, INT8 vs FP32, over all tokens and channels.
- cosine FP32 vs INT8 of the CLS token and of the patch mean, averaged over images.
- max |activation| over all tokens and images, FP32 and INT8.

The INT8 chain runs on its own outputs (noise accumulates through the stages, as in deployment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from ovclip.bench.metrics import exit_histogram, rescue_quadrants, topk_accuracy
from ovclip.errors import OvclipError
from ovclip.folder import Manifest
from ovclip.policy.inr import inr, nsr, prune

TOKENS = {
    "patch_mean": "mean of the patch tokens (CLS excluded) — what the SSA exit heads read",
    "cls": "the class token (token 0)",
    "all_tokens": "all tokens and channels of the block output, flattened",
}
GEOMETRY_KEYS = ("num_layers", "hidden_size", "intermediate_size", "image_size", "patch_size", "tokens")


def check_same_checkpoint(ref: Manifest, other: Manifest, ref_name: str = "fp32", name: str = "int8") -> None:
    """Raise one clear line unless `other` was written from the checkpoint `ref` was (manifest source,
    vision geometry, embedding size, preprocessing and the checkpoint's logit scale must all agree).
    `ref_name`, `name`: the API parameters the two folders were passed as, for the message."""
    a, b = ref["source"], other["source"]
    where = f"{name}={other.folder} and {ref_name}={ref.folder}"
    params = (name, ref_name)
    for key in ("kind", "spec"):
        if a.get(key) != b.get(key):
            raise OvclipError(
                f"{where} come from different checkpoints (source {key} {b.get(key)!r} vs {a.get(key)!r}); "
                "export and quantize the same checkpoint",
                params=params,
            )
    for key in GEOMETRY_KEYS:
        if ref.vision.get(key) != other.vision.get(key):
            raise OvclipError(
                f"{where} have different vision towers ({key} {other.vision.get(key)} vs {ref.vision.get(key)}); "
                "they cannot come from the same checkpoint",
                params=params,
            )
    if ref.get("embedding_dim") != other.get("embedding_dim"):
        raise OvclipError(
            f"{where} have different embedding sizes; they cannot come from the same checkpoint", params=params
        )
    la, lb = float(ref["logit_scale"]), float(other["logit_scale"])
    if abs(la - lb) > 1e-6 * max(1.0, abs(la)):
        raise OvclipError(
            f"{where} name the same source but differ in the checkpoint's logit scale ({lb:.6g} vs {la:.6g}): "
            "the checkpoint changed between export and quantize; re-run both",
            params=params,
        )
    if ref.get("preprocess") != other.get("preprocess"):
        raise OvclipError(
            f"{where} preprocess images differently; re-export them from the same checkpoint", params=params
        )


def check_variants(fp32: Manifest, int8: Manifest) -> None:
    if fp32.variant not in ("fp32", "fp16"):
        raise OvclipError(
            f"fp32={fp32.folder} is a {fp32.variant} folder; pass the FP32 folder `ovclip export` wrote",
            params="fp32",
        )
    if int8.variant != "int8":
        raise OvclipError(
            f"int8={int8.folder} is a {int8.variant} folder; pass the INT8 folder `ovclip quantize` wrote",
            params="int8",
        )


def select_images(n_available: int, n: int, seed: int = 0) -> np.ndarray:
    """`n` row numbers (sorted) drawn without replacement with a fixed seed; all rows if n >= available.
    (`n` is `analyze_folders`' `images`, which the error names.)"""
    if n < 2:
        raise OvclipError(f"images={n}: need at least 2 images (INR is a variance over images)", params="images")
    if n_available < 2:
        raise OvclipError(f"the data set has {n_available} image(s); need at least 2")
    if n >= n_available:
        return np.arange(n_available)
    return np.sort(np.random.default_rng(seed).permutation(n_available)[:n])


def _inr(fp32: np.ndarray, int8: np.ndarray) -> float | None:
    """Eq. 5 via `inr`; None where the error does not vary across images (e.g. the CLS token entering block 1 is
    the same vector for every image), which makes the ratio a division by zero rather than a measurement."""
    eps = int8.astype(np.float64) - fp32.astype(np.float64)
    noise = float(np.sum(eps.var(0)))
    signal = float(np.sum(fp32.astype(np.float64).mean(0) ** 2))
    if noise <= 1e-12 * max(signal, 1e-30):
        return None
    return inr(fp32, int8)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, -1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


@dataclass
class _Running:
    """Per-block accumulators over batches (block 0 = embeddings)."""

    n_blocks: int
    pooled: dict[str, dict[str, list[list[np.ndarray]]]] = field(default_factory=dict)
    sq: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)
    max_fp32: np.ndarray = field(init=False)
    max_int8: np.ndarray = field(init=False)
    nsr_all: list[list[np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        n = self.n_blocks + 1
        self.pooled = {
            kind: {"fp32": [[] for _ in range(n)], "int8": [[] for _ in range(n)]} for kind in ("patch_mean", "cls")
        }
        self.sq, self.count = np.zeros(n), np.zeros(n)
        self.max_fp32, self.max_int8 = np.zeros(n), np.zeros(n)
        self.nsr_all = [[] for _ in range(n)]

    def add(self, zf: list[np.ndarray], zq: list[np.ndarray]) -> None:
        for layer, (f, q) in enumerate(zip(zf, zq, strict=True)):
            for name, z in (("fp32", f), ("int8", q)):
                self.pooled["cls"][name][layer].append(z[:, 0, :].astype(np.float32))
                self.pooled["patch_mean"][name][layer].append(z[:, 1:, :].astype(np.float64).mean(1).astype(np.float32))
            d = (q.astype(np.float64) - f).reshape(len(f), -1)
            self.sq[layer] += float(np.sum(d**2))
            self.count[layer] += d.size
            self.max_fp32[layer] = max(self.max_fp32[layer], float(np.abs(f).max()))
            self.max_int8[layer] = max(self.max_int8[layer], float(np.abs(q).max()))
            if layer:
                prev = zf[layer - 1].reshape(len(f), -1)
                self.nsr_all[layer].append(
                    np.linalg.norm(d, axis=1)
                    / np.maximum(np.linalg.norm(f.reshape(len(f), -1).astype(np.float64) - prev, axis=1), 1e-30)
                )

    def vectors(self, kind: str, variant: str, layer: int) -> np.ndarray:
        return np.concatenate(self.pooled[kind][variant][layer])


def _stage_of(manifest: Manifest, layer: int) -> int:
    for k, st in enumerate(manifest.vision["stages"]):
        if st["blocks"][0] <= layer <= st["blocks"][1]:
            return k
    return -1


def block_statistics(
    fp32_taps: Callable[[np.ndarray], list[np.ndarray]],
    int8_taps: Callable[[np.ndarray], list[np.ndarray]],
    batches: Iterable[np.ndarray],
    num_layers: int,
    int8_manifest: Manifest | None = None,
    tick: Callable[[int], None] | None = None,
) -> tuple[dict, list[dict]]:
    """(the embeddings' row, one row per block) of the measurements in the module doc."""
    acc = _Running(num_layers)
    for px in batches:
        zf, zq = fp32_taps(px), int8_taps(px)
        if len(zf) != num_layers + 1 or len(zq) != num_layers + 1:
            raise OvclipError(f"expected {num_layers + 1} activations per model, got {len(zf)} and {len(zq)}")
        acc.add(zf, zq)
        if tick is not None:
            tick(len(px))

    def common(layer: int) -> dict:
        pf, pq = acc.vectors("patch_mean", "fp32", layer), acc.vectors("patch_mean", "int8", layer)
        cf, cq = acc.vectors("cls", "fp32", layer), acc.vectors("cls", "int8", layer)
        return {
            "inr_patch_mean": _inr(pf, pq),
            "inr_cls": _inr(cf, cq),
            "mse": float(acc.sq[layer] / acc.count[layer]),
            "cos_cls": float(np.mean(_cos(cf, cq))),
            "cos_patch_mean": float(np.mean(_cos(pf, pq))),
            "max_abs_fp32": float(acc.max_fp32[layer]),
            "max_abs_int8": float(acc.max_int8[layer]),
        }

    embeddings = {"block": 0, "what": "embeddings after the pre-LayerNorm (input of block 1)", **common(0)}
    rows = []
    for layer in range(1, num_layers + 1):
        nsrs = {
            f"nsr_{kind}": nsr(
                acc.vectors(kind, "fp32", layer - 1), acc.vectors(kind, "fp32", layer), acc.vectors(kind, "int8", layer)
            )
            for kind in ("patch_mean", "cls")
        }
        row = {
            "block": layer,
            "stage": _stage_of(int8_manifest, layer) if int8_manifest is not None else None,
            **nsrs,
            "nsr_all_tokens": float(np.mean(np.concatenate(acc.nsr_all[layer]))),
            **common(layer),
        }
        rows.append(row)
    return embeddings, rows


def eq6_pruning(rows: list[dict], candidates: list[int], kappa: float = 0.5) -> dict | None:
    """Pathological-layer pruning (Eq. 6) over the candidate exit blocks, on the patch-mean INR."""
    cands = [c for c in candidates if 1 <= c <= len(rows)]
    if not cands:
        return None
    inrs = {c: rows[c - 1]["inr_patch_mean"] for c in cands}
    if any(v is None for v in inrs.values()):
        return None
    kept, pruned = prune(inrs, kappa)
    return {
        "candidates": cands,
        "kappa": kappa,
        "inr_patch_mean": {str(k): v for k, v in inrs.items()},
        "kept": kept,
        "pruned": pruned,
    }


def measure_rescue(dep, pixels_batches: Iterable[tuple[np.ndarray, np.ndarray]], class_embeddings: np.ndarray) -> dict:
    """Paper §7 Table 4 on the data: early exit (per the folder's policy) vs the same folder at full depth."""
    if dep.policy is None:
        raise OvclipError(
            f"ee={dep.folder}: its manifest has no exit_policy; pass a folder quantized with exit heads "
            "(`ovclip quantize` writes them by default)",
            params="ee",
        )
    ee_ok, full_ok, layers, ee_scores, full_scores, labels = [], [], [], [], [], []
    for px, y in pixels_batches:
        ee = dep.run_vision(px, class_embeddings, early_exit=True)
        full = dep.run_vision(px, class_embeddings, early_exit=False)
        ee_ok.append(ee.scores.argmax(1) == y)
        full_ok.append(full.scores.argmax(1) == y)
        layers.append(ee.exit_layer)
        ee_scores.append(ee.scores)
        full_scores.append(full.scores)
        labels.append(y)
    ee_c, full_c, exit_layer = np.concatenate(ee_ok), np.concatenate(full_ok), np.concatenate(layers)
    y = np.concatenate(labels)
    q = rescue_quadrants(ee_c, full_c)
    return {
        "folder": str(dep.folder),
        "rule": dep.policy.rule,
        "exits": list(dep.policy.exits),
        "thresholds": {str(k): v for k, v in dep.policy.thresholds.items()},
        "quadrants": q,
        "top1_early_exit": topk_accuracy(np.concatenate(ee_scores), y, 1),
        "top1_full_depth": topk_accuracy(np.concatenate(full_scores), y, 1),
        "exit_histogram": exit_histogram(exit_layer, list(dep.policy.exits), dep.num_layers),
        "mean_exit_block": float(exit_layer.mean()),
    }
