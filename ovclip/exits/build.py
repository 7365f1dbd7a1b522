"""Build early exit for an INT8 deployment: heads, gates, layer choice (INR + pruning), thresholds.

Calibration images are split once (seeded) into three disjoint parts: one trains the heads, one fits
the gates, one chooses the thresholds (and reports the figures the policy was calibrated on).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov

from ovclip.errors import OvclipError
from ovclip.exits.gate_fit import select_gate
from ovclip.exits.heads import HeadTrainConfig, export_head, head_embeddings, select_head
from ovclip.exits.thresholds import drop_upper_bound, for_budget, for_max_drop, grid
from ovclip.export.stages import PAPER_EXITS_12, parse_exits
from ovclip.policy.cascade import Trace, evaluate, exit_layers
from ovclip.policy.flops import flops_to_exit
from ovclip.policy.inr import inr, nsr, prune
from ovclip.policy.rules import PAPER_GATE_FEATURES, ExitPolicy
from ovclip.policy.trace import exit_scores
from ovclip.quantize.nncf_stages import f32_compile

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint
    from ovclip.data.datasets import LabeledImages
    from ovclip.quantize.pipeline import FloatTower

DEFAULT_BUDGET = 0.85
PARETO_BUDGETS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4)


@dataclass(frozen=True)
class ExitBuildConfig:
    flops_budget: float | None = None  # fraction of full-depth FLOPs; default 0.85 when max_drop is unset
    max_drop: float | None = None  # accuracy points (0.5 = half a point) at 95% confidence
    placement: str = "fixed"  # fixed: given/default exits (+ INR pruning of the default candidates); auto
    kappa: float = 0.5
    max_auto_exits: int = 3
    confidence: float = 0.95
    head: HeadTrainConfig = field(default_factory=HeadTrainConfig)
    split: tuple[float, float, float] = (0.5, 1 / 6, 1 / 3)  # heads, gate, thresholds
    min_images: int = 600
    # An exit that few samples take costs a head, a gate and a stage boundary for every sample that passes
    # it (wall-clock overhead the FLOPs count hides): exits taken by less than this share are dropped.
    min_exit_share: float = 0.05
    # "paper": (confidence, margin, SAV) at every exit; "select": per exit the candidate set (the paper's,
    # its subsets, agreement with the previous exit) with the best cross-validated AUC on the gate split.
    # The default stays "paper": on the shipped model "select" ranks better but is not more accurate per
    # FLOPs budget (benchmarks/gate_vs_confidence.py, RESULTS.md).
    gate_features: str = "paper"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.flops_budget is not None and not 0 < self.flops_budget <= 1:
            raise OvclipError(f"--flops-budget {self.flops_budget}: give a fraction of full depth in (0, 1]")
        if self.max_drop is not None and not 0 < self.max_drop < 100:
            raise OvclipError(f"--max-drop {self.max_drop}: give accuracy points, e.g. 0.5")
        if self.flops_budget is not None and self.max_drop is not None:
            raise OvclipError("give --flops-budget or --max-drop, not both")
        if self.gate_features not in ("select", "paper"):
            raise OvclipError(f"--gate-features {self.gate_features}: give 'select' or 'paper'")


def split_calibration(n: int, cfg: ExitBuildConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the three disjoint calibration parts (heads, gate, thresholds), seeded by `cfg.seed`."""
    order = np.random.default_rng(cfg.seed).permutation(n)
    a = int(cfg.split[0] * n)
    b = a + int(cfg.split[1] * n)
    return order[:a], order[a:b], order[b:]


def default_candidates(n: int) -> list[int]:
    """The paper's candidate blocks 8..11 of 12 (block 9 is the one its pruning removes), scaled."""
    lo, hi = min(PAPER_EXITS_12), max(PAPER_EXITS_12)
    return sorted({max(1, min(n - 1, round(b * n / 12))) for b in range(lo, hi + 1)})


def drop_idle_exits(layers: list[int], choose, min_share: float, log=print) -> list[int]:
    """Remove, one at a time, the exit the calibrated policy sends the fewest samples to while that share
    is below `min_share`; thresholds are chosen again after each removal."""
    layers = list(layers)
    while len(layers) > 1:
        t, _, _, tr = choose(layers)
        taken = exit_layers(tr, t)
        share = {L: float(np.mean(taken == L)) for L in layers}
        idle = min(layers, key=lambda L: share[L])
        if share[idle] >= min_share:
            break
        log(f"exit after block {idle} takes {100 * share[idle]:.1f}% of samples (< {100 * min_share:.0f}%): dropped")
        layers.remove(idle)
    return layers


@dataclass
class Features:
    pooled: dict[int, np.ndarray]  # INT8 patch-token mean after block L, (N, D)
    sav: dict[int, np.ndarray]
    fp32_pooled: dict[int, np.ndarray]
    int8_final: np.ndarray  # (N, E) INT8 full-depth embedding, normalised
    fp32_final: np.ndarray


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def collect(
    blocks: list[ov.Model],
    fp32_blocks: list[ov.Model],
    data: LabeledImages,
    pcfg,
    layers: list[int],
    chunk: int = 200,
    log=print,
) -> Features:
    """Run every image through the INT8 and FP32 blocks once, keeping what the heads and INR need."""
    q = [f32_compile(b) for b in blocks]
    f = [f32_compile(b) for b in fp32_blocks]
    want = set(layers)
    pooled = {L: [] for L in layers}
    sav = {L: [] for L in layers}
    fpool = {L: [] for L in [*layers, *[L - 1 for L in layers if L > 1]]}
    finals, ffinals = [], []
    n = len(data)
    for i in range(0, n, chunk):
        px = data.pixels(np.arange(i, min(n, i + chunk)), pcfg)
        for compiled, store_int8 in ((q, True), (f, False)):
            x = px
            for k, c in enumerate(compiled):
                x = np.array(c(x)[0])
                layer = k + 1
                if layer < len(compiled):
                    patches = x[:, 1:, :]
                    mean = patches.mean(1)
                    if store_int8 and layer in want:
                        pooled[layer].append(mean)
                        sav[layer].append(((patches - mean[:, None]) ** 2).sum(-1).mean(-1))
                    if not store_int8 and layer in fpool:
                        fpool[layer].append(mean)
            (finals if store_int8 else ffinals).append(_l2n(x))
        log(f"exit features: {min(n, i + chunk)}/{n} images")
    cat = {k: np.concatenate(v) for k, v in pooled.items()}
    return Features(
        cat,
        {k: np.concatenate(v) for k, v in sav.items()},
        {k: np.concatenate(v) for k, v in fpool.items() if v},
        np.concatenate(finals),
        np.concatenate(ffinals),
    )


def build_exits(
    tmp: Path,
    ckpt: LoadedCheckpoint,
    tower: FloatTower,
    q_blocks: list[ov.Model],
    calibration: LabeledImages,
    cfg: ExitBuildConfig,
    *,
    exits=None,
    skip=None,
    log=print,
) -> tuple[list[int], dict]:
    """Train and calibrate early exit; write head IRs into `tmp`; return (exit blocks, manifest entries)."""
    from ovclip.bench.report import templates_for

    n_layers = len(q_blocks)
    if len(calibration) < cfg.min_images:
        raise OvclipError(
            f"early exit needs at least {cfg.min_images} labelled calibration images "
            f"(have {len(calibration)}); pass a larger --calibration set or --no-exits"
        )
    fixed = exits is not None and exits != "default"
    if cfg.placement == "auto":
        candidates = list(range(2, n_layers))
    elif fixed:
        candidates = parse_exits(exits, n_layers)
    else:
        candidates = default_candidates(n_layers)
    vc = ckpt.model.config.vision_config
    vision = {
        "num_layers": n_layers,
        "tokens": (vc.image_size // vc.patch_size) ** 2 + 1,
        "hidden_size": vc.hidden_size,
        "intermediate_size": vc.intermediate_size,
        "patch_size": vc.patch_size,
    }
    emb_dim = ckpt.model.config.projection_dim
    logit_scale = float(np.exp(float(ckpt.model.logit_scale.detach())))

    # Class text embeddings (FP32 text tower), prompts ensembled over templates.
    source = calibration.source.lower()
    templates = templates_for(
        "builtin" if ("fashion" in source or "built-in" in source or "builtin" in source) else "folder"
    )
    text = f32_compile(tower.text)
    prompts = [t.replace("{}", c) for c in calibration.prompt_names for t in templates]
    temb = _l2n(
        np.concatenate([np.array(text(ckpt.tokenizer(prompts[i : i + 64]))[0]) for i in range(0, len(prompts), 64)])
    )
    class_text = _l2n(temb.reshape(len(calibration.prompt_names), len(templates), -1).mean(1))

    feats = collect(q_blocks, tower.stages, calibration, ckpt.preprocess, candidates, log=log)
    labels = calibration.labels
    s_head, s_gate, s_thr = split_calibration(len(labels), cfg)

    # Layer diagnostics: INR of every candidate, NSR where the previous block is known.
    inrs = {L: inr(feats.fp32_pooled[L][s_head], feats.pooled[L][s_head]) for L in candidates}
    nsrs = {
        L: nsr(feats.fp32_pooled[L - 1][s_head], feats.fp32_pooled[L][s_head], feats.pooled[L][s_head])
        for L in candidates
        if (L - 1) in feats.fp32_pooled
    }
    if fixed:
        kept, pruned = candidates, []
    else:
        kept, pruned = prune(inrs, cfg.kappa)
    log(
        "INR per candidate exit: "
        + ", ".join(f"{L}: {v:.1f}" for L, v in inrs.items())
        + (f"; pruned (kappa {cfg.kappa}): {pruned}" if pruned else "")
    )

    heads, head_acc, scores, correct, embs, head_val, head_len = {}, {}, {}, {}, {}, {}, {}
    for L in kept:
        # training length chosen on the gate split (held out from head training, not the threshold split)
        heads[L], head_len[L], head_val[L] = select_head(
            feats.pooled[L], labels, class_text, feats.fp32_final, logit_scale, s_head, s_gate, cfg.head
        )
        embs[L] = head_embeddings(heads[L], feats.pooled[L])
        scores[L] = logit_scale * embs[L] @ class_text.T
        correct[L] = scores[L].argmax(1) == labels
        head_acc[L] = float(correct[L][s_thr].mean())
    full_scores = logit_scale * feats.int8_final @ class_text.T
    full_correct = full_scores.argmax(1) == labels
    log(
        "exit-head top-1 on the threshold split: "
        + ", ".join(f"{L}: {100 * v:.1f}% ({head_len[L]} epochs)" for L, v in head_acc.items())
        + f"; INT8 full depth {100 * full_correct[s_thr].mean():.1f}%"
    )

    gate_cache: dict[tuple[int, int | None], tuple] = {}

    def gate_for(L: int, P: int | None):
        """Exit L's gate when the exit before it is P (agreement features compare with P's outputs), and the
        cross-validated AUC of every candidate feature set (recorded whichever mode chose the gate)."""
        if (L, P) not in gate_cache:
            g = s_gate
            ctx = {"emb": embs[L][g]} | ({} if P is None else {"prev": embs[P][g], "prev_scores": scores[P][g]})
            fixed = PAPER_GATE_FEATURES if cfg.gate_features == "paper" else None
            gate_cache[L, P] = select_gate(scores[L][g], feats.sav[L][g], correct[L][g], features=fixed, **ctx)
        return gate_cache[L, P]

    def gates_for(layers: list[int]) -> dict:
        return {L: gate_for(L, layers[j - 1] if j else None)[0] for j, L in enumerate(layers)}

    def trace_for(rule: str, layers: list[int], idx: np.ndarray) -> Trace:
        as_rule = ExitPolicy(rule, list(layers), {}, {}, gates_for(layers) if rule == "gate" else {})
        sc = exit_scores(
            as_rule,
            {L: scores[L][idx] for L in layers},
            {L: feats.sav[L][idx] for L in layers},
            {L: embs[L][idx] for L in layers},
        )
        fl = {L: float(flops_to_exit(vision, emb_dim, L, layers, len(class_text))) for L in [*layers, n_layers]}
        return Trace(list(layers), sc, {L: correct[L][idx] for L in layers}, full_correct[idx], fl, n_layers)

    def choose(rule: str, layers: list[int], points: int = 25):
        tr = trace_for(rule, layers, s_thr)
        grids = {
            L: ([None] if (rule == "agreement" and j == 0) else grid(tr.score[L], points)) for j, L in enumerate(layers)
        }
        if cfg.max_drop is not None:
            t, acc, fl = for_max_drop(tr, grids, cfg.max_drop / 100, cfg.confidence)
        else:
            t, acc, fl = for_budget(tr, grids, cfg.flops_budget or DEFAULT_BUDGET)
        return t, acc, fl, tr

    if cfg.placement == "auto":
        best = None
        for k in range(1, cfg.max_auto_exits + 1):
            for subset in itertools.combinations(kept, k):
                t, acc, fl, _ = choose("gate", list(subset), points=9)
                key = (-fl, acc) if cfg.max_drop is not None else (acc, -fl)
                if best is None or key > best[0]:
                    best = (key, list(subset))
        chosen = best[1]
        log(f"--exits auto chose blocks {chosen}")
    else:
        chosen = kept
    if not fixed:
        chosen = drop_idle_exits(chosen, lambda layers: choose("gate", layers), cfg.min_exit_share, log)

    policies = {}
    summary = {}
    for rule in ("gate", "confidence", "agreement"):
        t, acc, fl, tr = choose(rule, chosen)
        _, _, ee_corr = evaluate(tr, t)
        summary[rule] = {
            "thresholds": {str(k): v for k, v in t.items()},
            "calibration_top1": acc,
            "calibration_full_depth_top1": float(tr.full_correct.mean()),
            "calibration_flops_saving": 1 - fl / tr.flops[n_layers],
            "drop_upper_bound_95": drop_upper_bound(ee_corr, tr.full_correct, cfg.confidence),
        }
        policies[rule] = t
    pareto = []
    for budget in PARETO_BUDGETS:
        row = {"budget": budget}
        for rule in ("gate", "confidence"):
            tr = trace_for(rule, chosen, s_thr)
            grids = {L: grid(tr.score[L]) for L in chosen}
            t, acc, fl = for_budget(tr, grids, budget)
            row[rule] = {
                "thresholds": {str(k): v for k, v in t.items()},
                "calibration_top1": acc,
                "calibration_flops_saving": 1 - fl / tr.flops[n_layers],
            }
        if all(row[r]["calibration_flops_saving"] >= 1 - budget - 1e-9 for r in ("gate", "confidence")):
            pareto.append(row)  # budgets no thresholds can meet (too few FLOPs left) are not points

    head_files = {}
    for L in chosen:
        name = f"exit_head_{L}.xml"
        ov.save_model(export_head(heads[L], vision["tokens"], vision["hidden_size"]), tmp / name, compress_to_fp16=True)
        head_files[L] = name
    s = summary["gate"]
    log(
        f"policy (gate): thresholds {s['thresholds']}, calibration top-1 {100 * s['calibration_top1']:.2f}% vs "
        f"full depth {100 * s['calibration_full_depth_top1']:.2f}%, "
        f"FLOPs saving {100 * s['calibration_flops_saving']:.1f}%"
    )
    info = {
        "objective": (
            {"max_drop_points": cfg.max_drop, "confidence": cfg.confidence}
            if cfg.max_drop is not None
            else {"flops_budget": cfg.flops_budget or DEFAULT_BUDGET}
        ),
        "templates": templates,
        "class_names": list(calibration.class_names),
        "prompt_names": list(calibration.prompt_names),
        "splits": {"heads": len(s_head), "gate": len(s_gate), "thresholds": len(s_thr), "source": calibration.source},
        "candidates": candidates,
        "inr": {str(k): v for k, v in inrs.items()},
        "nsr": {str(k): v for k, v in nsrs.items()},
        "pruned": pruned,
        "kappa": cfg.kappa,
        "head_top1": {str(k): v for k, v in head_acc.items()},
        "head_training": asdict(cfg.head),
        "head_epochs_validation_top1": {str(L): {str(e): a for e, a in v.items()} for L, v in head_val.items()},
        "rules": summary,
        "pareto": pareto,
        "placement": cfg.placement,
    }
    final_gates = gates_for(chosen)
    info["gate_features"] = {
        "mode": cfg.gate_features,
        "per_exit": {
            str(L): {
                "features": list(final_gates[L].features),
                "cv_auc_gate_split": gate_for(L, chosen[j - 1] if j else None)[1],
            }
            for j, L in enumerate(chosen)
        },
    }
    log(
        "gate features: "
        + "; ".join(f"exit {L}: {'+'.join(final_gates[L].features)}" for L in chosen)
        + f" ({cfg.gate_features})"
    )
    gate_policy = ExitPolicy("gate", chosen, head_files, policies["gate"], final_gates, info)
    emb_policy = ExitPolicy(
        "agreement", chosen, head_files, policies["agreement"], {}, {"rules": {"agreement": summary["agreement"]}}
    )
    return chosen, {"exit_policy": gate_policy.to_dict(), "exit_policy_embedding": emb_policy.to_dict()}
