"""Early exit calibrated on images without labels (a flat folder, an image list, a captions file).

Same steps as the labelled build (`ovclip.exits.build`), none of which reads a label:
1. one pass of every calibration image through the INT8 and FP32 blocks (`collect_features`);
2. INR pruning of the candidate exits on the head split (`LayerDiagnostics`);
3. one head per exit, trained on the head split by distillation to the FP32 final embedding (and contrastively
   against the caption embeddings where there are captions), its training length chosen on the fit split
   (`ovclip.exits.distill`);
4. the fidelity rule's models fitted on the fit split, its thresholds chosen on the held-out threshold split
   to the objective (`ovclip.exits.label_free`); exits that few images take are dropped.
The one policy serves both with and without a label set (the rule reads no class scores).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov

from ovclip.errors import OvclipError
from ovclip.exits.calibrate import drop_idle_exits
from ovclip.exits.config import ExitBuildConfig, check_calibration_size, split_calibration
from ovclip.exits.distill import DistillTargets, select_distill_head
from ovclip.exits.features import Features, collect_features
from ovclip.exits.fidelity import MinFidelity
from ovclip.exits.heads import HeadTrainConfig, SSAHead, export_head, head_embeddings
from ovclip.exits.label_free import LabelFreeData, choose_label_free, describe_label_free, label_free_policy
from ovclip.exits.layers import LayerDiagnostics, candidate_exits
from ovclip.exits.result import ExitBuild
from ovclip.export.exporter import VisionGeometry
from ovclip.ir import compile_f32
from ovclip.policy.rules import ExitPolicy
from ovclip.progress import Progress, note
from ovclip.vectors import l2_normalize

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint
    from ovclip.export.float_tower import FloatTower


def build_label_free_exits(
    ckpt: LoadedCheckpoint,
    tower: FloatTower,
    q_blocks: list[ov.Model],
    calibration,
    cfg: ExitBuildConfig,
    *,
    exits: str | list[int] | None = None,
    progress: Progress | None = None,
) -> ExitBuild:
    """Train and calibrate early exit on unlabeled `calibration` images (`build_exits` sends them here)."""
    if cfg.max_drop is not None:
        raise OvclipError(
            "max_drop bounds an accuracy drop, which needs labelled calibration images; give min_fidelity "
            "(mean cosine to full depth) or flops_budget instead",
            params=("max_drop", "calibration"),
        )
    check_calibration_size(calibration, cfg)
    geo = VisionGeometry.of(ckpt.model)
    candidates, fixed = candidate_exits(exits, cfg.placement, geo.num_layers, labelled=False)
    feats = collect_features(q_blocks, tower.stages, calibration, ckpt.preprocess, candidates, progress=progress)
    head_split, fit_split, threshold_split = split_calibration(len(calibration), cfg)
    layers = LayerDiagnostics.measure(feats, candidates, head_split, None if fixed else cfg.kappa)
    note(progress, layers.describe())
    logit_scale = float(np.exp(float(ckpt.model.logit_scale.detach())))
    captions = caption_embeddings(tower.text, ckpt.tokenizer, calibration)
    targets = DistillTargets(feats.fp32_final, captions, logit_scale)
    heads = DistilledHeads.train(feats, layers.kept, targets, (head_split, fit_split), cfg.head)
    note(progress, heads.describe(feats, threshold_split))
    data = LabelFreeData(
        heads.embeddings, feats.int8_final, fit_split, threshold_split, geo.record(), geo.embedding_dim
    )
    objective = cfg.label_free_objective(labelled=False)
    chosen = place_label_free(data, layers.kept, cfg, fixed, progress)
    policy = label_free_policy(data, chosen, objective, calibration_record(calibration, captions is not None))
    policy.info |= {
        "splits": {"heads": len(head_split), **policy.info["splits"]},
        **layers.record(),
        "kappa": cfg.kappa,
        "placement": cfg.placement,
        **heads.record(cfg.head, feats, threshold_split),
    }
    note(progress, describe_label_free(policy))
    exported = {L: export_head(heads.heads[L], geo.tokens, geo.hidden_size) for L in chosen}
    return ExitBuild(chosen, exported, policy, policy)


def calibration_record(calibration, captions: bool) -> dict:
    """What the manifest says about the calibration data of an exit policy."""
    return {
        "source": calibration.source,
        "labelled": calibration.labels is not None,
        "captions": captions,
        "images": len(calibration),
        "skipped": len(getattr(calibration, "skipped", []) or []),
    }


def caption_embeddings(text: ov.Model, tokenizer, calibration, batch: int = 64) -> np.ndarray | None:
    """(N, E) per calibration image, the normalised mean of its captions' FP32 text embeddings; None without
    captions."""
    if not hasattr(calibration, "caption_lists"):
        return None
    lists = calibration.caption_lists()
    flat = [c for caps in lists for c in caps]
    compiled = compile_f32(text)
    emb = l2_normalize(
        np.concatenate([np.array(compiled(tokenizer(flat[i : i + batch]))[0]) for i in range(0, len(flat), batch)])
    )
    owner = np.repeat(np.arange(len(lists)), [len(c) for c in lists])
    sums = np.zeros((len(lists), emb.shape[1]), np.float64)
    np.add.at(sums, owner, emb)
    return l2_normalize(sums.astype(np.float32))


@dataclass
class DistilledHeads:
    """One distilled head per kept exit, its training length, and its embeddings of every calibration image."""

    heads: dict[int, SSAHead]
    epochs: dict[int, int]
    validation_cosine: dict[int, dict[int, float]]  # exit -> {training length: mean cosine on the fit split}
    embeddings: dict[int, np.ndarray]

    @classmethod
    def train(
        cls,
        feats: Features,
        layers: list[int],
        targets: DistillTargets,
        splits: tuple[np.ndarray, np.ndarray],
        cfg: HeadTrainConfig,
    ) -> DistilledHeads:
        heads, epochs, val, embs = {}, {}, {}, {}
        for L in layers:
            heads[L], epochs[L], val[L] = select_distill_head(feats.pooled[L], targets, *splits, cfg)
            embs[L] = head_embeddings(heads[L], feats.pooled[L])
        return cls(heads, epochs, val, embs)

    def threshold_cosine(self, feats: Features, idx: np.ndarray) -> dict[int, float]:
        """Mean cosine of each exit's embeddings to the INT8 full-depth ones on rows `idx`."""
        return {L: float(np.mean(np.sum(e[idx] * feats.int8_final[idx], axis=1))) for L, e in self.embeddings.items()}

    def describe(self, feats: Features, idx: np.ndarray) -> str:
        per_exit = ", ".join(
            f"{L}: {v:.4f} ({self.epochs[L]} epochs)" for L, v in self.threshold_cosine(feats, idx).items()
        )
        return f"distilled exit heads, mean cosine to full depth on the threshold split: {per_exit}"

    def record(self, cfg: HeadTrainConfig, feats: Features, idx: np.ndarray) -> dict:
        return {
            "head_training": {"loss": "distillation", "epochs": {str(L): e for L, e in self.epochs.items()}},
            "head_cosine_to_full_depth": {str(L): v for L, v in self.threshold_cosine(feats, idx).items()},
            "head_epochs_validation_cosine": {
                str(L): {str(e): c for e, c in v.items()} for L, v in self.validation_cosine.items()
            },
            "head_config": {"epoch_candidates": list(cfg.epoch_candidates), "lr": cfg.lr, "seed": cfg.seed},
        }


def place_label_free(
    data: LabelFreeData, kept: list[int], cfg: ExitBuildConfig, fixed: bool, progress: Progress | None
) -> list[int]:
    """The exits the fidelity rule uses: the best subset of up to `max_auto_exits` (placement "auto"), or the
    kept candidates; unless the exits were given, those too few images take are then dropped."""
    objective = cfg.label_free_objective(labelled=False)
    chosen = list(kept)
    if cfg.placement == "auto":
        best = None
        for k in range(1, cfg.max_auto_exits + 1):
            for subset in itertools.combinations(kept, k):
                _, fid, fl, *_ = choose_label_free(data, list(subset), objective, points=9)
                key = (-fl, fid) if isinstance(objective, MinFidelity) else (fid, -fl)
                if best is None or key > best[0]:
                    best = (key, list(subset))
        chosen = best[1]
        note(progress, f"placement 'auto' chose blocks {chosen}")
    if fixed:
        return chosen
    return drop_idle_exits(chosen, lambda ls: choose_label_free(data, ls, objective)[:4], cfg.min_exit_share, progress)


def embedding_policy_of_labelled_build(
    embeddings: dict[int, np.ndarray],
    feats: Features,
    splits: tuple[np.ndarray, np.ndarray],
    geo: VisionGeometry,
    chosen: list[int],
    cfg: ExitBuildConfig,
    calibration,
    progress: Progress | None = None,
) -> ExitPolicy:
    """The label-free (fidelity) rule of a labelled build, for runs without class embeddings: calibrated on the
    labelled build's heads, its fidelity models fitted on the gate split, thresholds on the threshold split."""
    data = LabelFreeData(embeddings, feats.int8_final, *splits, geo.record(), geo.embedding_dim)
    policy = label_free_policy(
        data, chosen, cfg.label_free_objective(labelled=True), calibration_record(calibration, False)
    )
    note(progress, describe_label_free(policy))
    return policy
