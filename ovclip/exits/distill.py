"""Exit heads trained without labels: distillation to the FP32 model's final image embedding.

The loss is the mean cosine distance between a head's (normalised) embedding and the FP32 full-depth embedding
of the same image; where the calibration images carry captions, an in-batch contrastive term (CLIP's symmetric
cross-entropy, scaled by the model's logit scale) pulls each head embedding towards its own caption's text
embedding and away from the other captions of the batch. The head is the same `SSAHead` the labelled build
trains (`ovclip.exits.heads`), exported the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ovclip.exits.heads import HeadTrainConfig, SSAHead, fit_head, head_embeddings


@dataclass(frozen=True)
class DistillTargets:
    """What a label-free head is trained towards, one row per calibration image."""

    fp32_final: np.ndarray  # (N, E) FP32 full-depth image embeddings
    captions: np.ndarray | None = None  # (N, E) normalised caption text embedding per image (mean over its captions)
    logit_scale: float = 100.0  # temperature of the contrastive term (the model's own)
    caption_weight: float = 1.0  # weight of the contrastive term where captions exist

    def rows(self, idx: np.ndarray) -> DistillTargets:
        caps = None if self.captions is None else self.captions[idx]
        return replace(self, fp32_final=self.fp32_final[idx], captions=caps)


def _normalized(x: np.ndarray) -> torch.Tensor:
    return F.normalize(torch.from_numpy(np.asarray(x, np.float32)), dim=-1)


def distill_loss(emb: torch.Tensor, target: torch.Tensor, captions: torch.Tensor | None, t: DistillTargets):
    """Mean cosine distance to `target` (+ the symmetric contrastive loss against `captions`); `emb` normalised."""
    loss = (1 - (emb * target).sum(-1)).mean()
    if captions is not None and t.caption_weight > 0 and len(emb) > 1:
        logits = t.logit_scale * emb @ captions.T
        y = torch.arange(len(emb))
        loss = loss + t.caption_weight * 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))
    return loss


def train_distill_head(
    pooled: np.ndarray, targets: DistillTargets, cfg: HeadTrainConfig = HeadTrainConfig()
) -> SSAHead:
    """Fit one head on pooled patch tokens (N, D) by `distill_loss` (AdamW, cosine schedule, seeded)."""
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(pooled.astype(np.float32))
    target = _normalized(targets.fp32_final)
    caps = None if targets.captions is None else _normalized(targets.captions)

    def loss(emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return distill_loss(emb, target[idx], None if caps is None else caps[idx], targets)

    return fit_head(x, target.shape[1], loss, cfg)


def mean_cosine(head: SSAHead, pooled: np.ndarray, target: np.ndarray) -> float:
    """Mean cosine of the head's embeddings of `pooled` to `target` (rows paired)."""
    emb = head_embeddings(head, pooled)
    return float(np.mean(np.sum(emb * _normalized(target).numpy(), axis=1)))


def select_distill_head(
    pooled: np.ndarray,
    targets: DistillTargets,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: HeadTrainConfig = HeadTrainConfig(),
) -> tuple[SSAHead, int, dict[int, float]]:
    """One head per candidate training length on `train_idx`; the one whose embeddings are closest (mean cosine)
    to the FP32 final embeddings of `val_idx` is kept (ties: the shorter). Returns it, its length and the
    validation mean cosine of every length."""
    lengths = cfg.epoch_candidates or (cfg.epochs,)
    best, val = None, {}
    for epochs in lengths:
        head = train_distill_head(pooled[train_idx], targets.rows(train_idx), replace(cfg, epochs=epochs))
        val[epochs] = mean_cosine(head, pooled[val_idx], targets.fp32_final[val_idx])
        if best is None or val[epochs] > val[best[0]]:
            best = (epochs, head)
    return best[1], best[0], val
