"""Calibrate early exit for an INT8 tower: heads, gates, layer choice (INR + pruning), thresholds.

Calibration images are split once (seeded) into three disjoint parts: one trains the heads, one fits
the gates, one chooses the thresholds (and reports the figures the policy was calibrated on).

`build_exits` returns the heads (as IR models) and the policies; it writes nothing. The quantize pipeline
names the head files and writes them into the deployment folder with everything else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov

from ovclip.data.prompts import all_prompts, ensemble, prompt_templates
from ovclip.exits.calibrate import PARETO_BUDGETS, ExitCalibration, ExitOutputs
from ovclip.exits.config import ExitBuildConfig, Placement, check_calibration_size, split_calibration
from ovclip.exits.features import Features, collect_features
from ovclip.exits.heads import HeadIRs, HeadTrainConfig, SSAHead, head_embeddings, select_head
from ovclip.exits.label_free_build import build_label_free_exits, embedding_policy_of_labelled_build
from ovclip.exits.layers import LayerDiagnostics, candidate_exits
from ovclip.exits.result import ExitBuild
from ovclip.exits.rule_select import deployed_rule
from ovclip.export.exporter import VisionGeometry
from ovclip.ir import compile_f32
from ovclip.policy.rules import ExitPolicy
from ovclip.progress import Progress, note

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint
    from ovclip.data.datasets import LabeledImages
    from ovclip.export.float_tower import FloatTower


def build_exits(
    ckpt: LoadedCheckpoint,
    tower: FloatTower,
    q_blocks: list[ov.Model],
    calibration: LabeledImages,
    cfg: ExitBuildConfig,
    *,
    exits: str | list[int] | None = None,
    progress: Progress | None = None,
) -> ExitBuild:
    """Train and calibrate early exit on `calibration` for the INT8 blocks `q_blocks` (FP32 twins in `tower`).

    `exits`: candidate blocks ("default"/None: the paper's candidates, thinned by INR pruning unless
    placement is "auto"); a given list is kept as it is. Unlabeled `calibration` (no `labels`): the label-free
    build (`ovclip.exits.label_free_build`)."""
    if calibration.labels is None:
        return build_label_free_exits(ckpt, tower, q_blocks, calibration, cfg, exits=exits, progress=progress)
    check_calibration_size(calibration, cfg)
    geo = VisionGeometry.of(ckpt.model)
    candidates, fixed = candidate_exits(exits, cfg.placement, geo.num_layers)
    logit_scale = float(np.exp(float(ckpt.model.logit_scale.detach())))
    templates = prompt_templates(cfg.templates)
    class_text = class_text_embeddings(tower.text, ckpt.tokenizer, calibration.prompt_names, templates)
    feats = collect_features(q_blocks, tower.stages, calibration, ckpt.preprocess, candidates, progress=progress)
    splits = head_split, gate_split, threshold_split = split_calibration(len(calibration.labels), cfg)
    layers = LayerDiagnostics.measure(feats, candidates, head_split, None if fixed else cfg.kappa)
    note(progress, layers.describe())
    heads = TrainedHeads.train(feats, layers.kept, calibration.labels, class_text, logit_scale, splits, cfg.head)
    note(progress, heads.describe(threshold_split))
    calib = ExitCalibration(
        heads.outputs, gate_split, threshold_split, geo.record(), geo.embedding_dim, len(class_text), cfg
    )
    chosen = place_exits(calib, layers.kept, cfg.placement, fixed, progress)
    thresholds, summary = calib.rule_summaries(chosen)
    gates = calib.gates(chosen)
    info = {
        "objective": cfg.objective.record(),
        "templates": templates,
        "class_names": list(calibration.class_names),
        "prompt_names": list(calibration.prompt_names),
        "splits": {
            "heads": len(head_split),
            "gate": len(gate_split),
            "thresholds": len(threshold_split),
            "source": calibration.source,
        },
        **layers.record(),
        "kappa": cfg.kappa,
        **heads.record(cfg.head),
        "rules": summary,
        "pareto": calib.pareto(chosen),
        "placement": cfg.placement,
        "gate_features": gate_feature_record(calib, chosen, cfg.gate_features),
    }
    note(progress, describe_policy(summary["gate"]))
    note(progress, describe_gates(gates, cfg.gate_features))
    return ExitBuild(
        chosen,
        HeadIRs({L: heads.heads[L] for L in chosen}, geo.tokens, geo.hidden_size),
        deployed_rule(  # --exit-rule: "paper"/"select" keep the gate policy; otherwise chosen by cross-fitting
            ExitPolicy("gate", chosen, {}, thresholds["gate"], gates, info),
            cfg.rule_mode,
            heads.outputs,
            head_split,
            (geo.record(), geo.embedding_dim, len(class_text)),
            cfg.objective,
            budgets=PARETO_BUDGETS,
            seed=cfg.seed,
            progress=progress,
        ),
        embedding_policy_of_labelled_build(
            heads.outputs.embeddings, feats, (gate_split, threshold_split), geo, chosen, cfg, calibration, progress
        ),
    )


def class_text_embeddings(text: ov.Model, tokenizer, prompt_names: list[str], templates: list[str]) -> np.ndarray:
    """(C, E) class embeddings from the FP32 text tower, prompts ensembled over `templates`."""
    compiled = compile_f32(text)
    prompts = all_prompts(list(prompt_names), list(templates))
    raw = np.concatenate([np.array(compiled(tokenizer(prompts[i : i + 64]))[0]) for i in range(0, len(prompts), 64)])
    return ensemble(raw.reshape(len(prompt_names), len(templates), -1))


@dataclass
class TrainedHeads:
    """One SSA head per kept exit, its training length, and its outputs on every calibration image."""

    heads: dict[int, SSAHead]
    epochs: dict[int, int]  # the training length chosen on the gate split
    validation_top1: dict[int, dict[int, float]]  # exit -> {training length: top-1 on the gate split}
    threshold_top1: dict[int, float]  # exit -> top-1 on the threshold split
    outputs: ExitOutputs

    @classmethod
    def train(
        cls,
        feats: Features,
        layers: list[int],
        labels: np.ndarray,
        class_text: np.ndarray,
        logit_scale: float,
        splits: tuple[np.ndarray, np.ndarray, np.ndarray],
        cfg: HeadTrainConfig,
    ) -> TrainedHeads:
        head_split, gate_split, threshold_split = splits
        heads, epochs, val, top1, embs, scores, correct = {}, {}, {}, {}, {}, {}, {}
        for L in layers:
            # the training length is chosen on the gate split (held out from training, not the threshold split)
            heads[L], epochs[L], val[L] = select_head(
                feats.pooled[L], labels, class_text, feats.fp32_final, logit_scale, head_split, gate_split, cfg
            )
            embs[L] = head_embeddings(heads[L], feats.pooled[L])
            scores[L] = logit_scale * embs[L] @ class_text.T
            correct[L] = scores[L].argmax(1) == labels
            top1[L] = float(correct[L][threshold_split].mean())
        full_correct = (logit_scale * feats.int8_final @ class_text.T).argmax(1) == labels
        sav = {L: feats.sav[L] for L in layers}
        return cls(heads, epochs, val, top1, ExitOutputs(embs, scores, correct, sav, full_correct))

    def describe(self, threshold_split: np.ndarray) -> str:
        per_exit = ", ".join(f"{L}: {100 * v:.1f}% ({self.epochs[L]} epochs)" for L, v in self.threshold_top1.items())
        full = 100 * self.outputs.full_correct[threshold_split].mean()
        return f"exit-head top-1 on the threshold split: {per_exit}; INT8 full depth {full:.1f}%"

    def record(self, cfg: HeadTrainConfig) -> dict:
        return {
            "head_top1": {str(k): v for k, v in self.threshold_top1.items()},
            "head_training": asdict(cfg),
            "head_epochs_validation_top1": {
                str(L): {str(e): a for e, a in v.items()} for L, v in self.validation_top1.items()
            },
        }


def place_exits(
    calib: ExitCalibration, kept: list[int], placement: Placement, fixed: bool, progress: Progress | None
) -> list[int]:
    """The exits the policy uses: the best subset (placement "auto") or the kept candidates, then, unless the
    exits were given, without those too few samples would take."""
    chosen = kept
    if placement == "auto":
        chosen = calib.best_subset(kept)
        note(progress, f"placement 'auto' chose blocks {chosen}")
    return chosen if fixed else calib.drop_idle_exits(chosen, progress)


def gate_feature_record(calib: ExitCalibration, chosen: list[int], mode: str) -> dict:
    gates, aucs = calib.gates(chosen), calib.gate_aucs(chosen)
    per_exit = {str(L): {"features": list(gates[L].features), "cv_auc_gate_split": aucs[L]} for L in chosen}
    return {"mode": mode, "per_exit": per_exit}


def describe_policy(s: dict) -> str:
    return (
        f"policy (gate): thresholds {s['thresholds']}, calibration top-1 {100 * s['calibration_top1']:.2f}% vs "
        f"full depth {100 * s['calibration_full_depth_top1']:.2f}%, "
        f"FLOPs saving {100 * s['calibration_flops_saving']:.1f}%"
    )


def describe_gates(gates: dict, mode: str) -> str:
    return "gate features: " + "; ".join(f"exit {L}: {'+'.join(g.features)}" for L, g in gates.items()) + f" ({mode})"
