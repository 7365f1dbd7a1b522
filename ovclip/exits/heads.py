"""SSA exit heads (paper Eq. 3): mean of the patch tokens (CLS excluded) -> LayerNorm -> MLP -> embedding.

Trained in torch on features cached once from the quantized backbone; exported to IR together with the
spatial-activation variance (SAV) the gate reads, so the runtime needs one call per exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadTrainConfig:
    epochs: int = 60  # the training length when no candidates are given
    # Training lengths tried (each a full cosine schedule); the one whose head is most accurate on a held-out
    # split is kept (`select_head`). 60 epochs underfit the built-in model's heads (train top-1 ~85 %).
    epoch_candidates: tuple[int, ...] = (100, 200, 400)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    distill_weight: float = 1.0  # weight of (1 - cos(head, FP32 final embedding))
    ce_weight: float = 1.0  # weight of cross-entropy against the class-prompt text embeddings
    seed: int = 0


class SSAHead(nn.Module):
    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, emb)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(pooled))))


class HeadWithSAV(nn.Module):
    """hidden (B, T, D) -> (embedding (B, E), SAV (B,)); SAV = mean_i ||z_i - mean z||^2 over patch tokens."""

    def __init__(self, head: SSAHead):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = hidden[:, 1:, :]
        mean = patches.mean(dim=1)
        sav = ((patches - mean[:, None, :]) ** 2).sum(-1).mean(-1)
        return self.head(mean), sav


def train_head(
    pooled: np.ndarray,
    labels: np.ndarray,
    class_text: np.ndarray,
    fp32_target: np.ndarray,
    logit_scale: float,
    cfg: HeadTrainConfig = HeadTrainConfig(),
) -> SSAHead:
    """Fit one head: CE of scaled cosine logits against class text embeddings + cosine distillation."""
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(pooled.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    t = F.normalize(torch.from_numpy(class_text.astype(np.float32)), dim=-1)
    target = F.normalize(torch.from_numpy(fp32_target.astype(np.float32)), dim=-1)

    def loss(emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ce = cfg.ce_weight * F.cross_entropy(logit_scale * emb @ t.T, y[idx])
        return ce + cfg.distill_weight * (1 - (emb * target[idx]).sum(-1)).mean()

    return fit_head(x, t.shape[1], loss, cfg)


BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (normalised embeddings, batch rows) -> loss


def fit_head(x: torch.Tensor, out_dim: int, batch_loss: BatchLoss, cfg: HeadTrainConfig) -> SSAHead:
    """The training loop every head shares: a fresh `SSAHead` (global torch seed as set by the caller) fitted by
    AdamW with a cosine schedule over `cfg.epochs` seeded shuffles of `x`; `batch_loss(normalised embeddings,
    batch row indices)` is the loss."""
    head = SSAHead(x.shape[1], out_dim)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, int(np.ceil(len(x) / cfg.batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    head.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            loss = batch_loss(F.normalize(head(x[idx]), dim=-1), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def select_head(
    pooled: np.ndarray,
    labels: np.ndarray,
    class_text: np.ndarray,
    fp32_target: np.ndarray,
    logit_scale: float,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: HeadTrainConfig = HeadTrainConfig(),
) -> tuple[SSAHead, int, dict[int, float]]:
    """Train one head per candidate length on `train_idx`; keep the most accurate on `val_idx` (ties: the
    shorter). Returns the head, its length and the validation top-1 of every candidate."""
    lengths = cfg.epoch_candidates or (cfg.epochs,)
    best, val = None, {}
    for epochs in lengths:
        head = train_head(
            pooled[train_idx],
            labels[train_idx],
            class_text,
            fp32_target[train_idx],
            logit_scale,
            replace(cfg, epochs=epochs),
        )
        emb = head_embeddings(head, pooled[val_idx])
        val[epochs] = float(np.mean((emb @ class_text.T).argmax(1) == labels[val_idx]))
        if best is None or val[epochs] > val[best[0]]:
            best = (epochs, head)
    return best[1], best[0], val


@torch.no_grad()
def head_embeddings(head: SSAHead, pooled: np.ndarray) -> np.ndarray:
    return F.normalize(head(torch.from_numpy(pooled.astype(np.float32))), dim=-1).numpy()


def export_head(head: SSAHead, tokens: int, width: int, batch: int | None = None):
    """The head (+SAV) as an ov.Model taking hidden states (B, T, D)."""
    import openvino as ov

    b = -1 if batch is None else batch
    with torch.no_grad():
        model = ov.convert_model(
            HeadWithSAV(head).eval(),
            example_input=torch.zeros(2, tokens, width),
            input=[(ov.PartialShape([b, tokens, width]), ov.Type.f32)],
        )
    model.inputs[0].get_tensor().set_names({"hidden_states"})
    model.outputs[0].get_tensor().set_names({"exit_embeds"})
    model.outputs[1].get_tensor().set_names({"sav"})
    return model


class HeadIRs(Mapping):
    """Trained heads as IR models (`export_head`), each converted when it is first read: a writer that saves
    them one by one converts each just before saving it."""

    def __init__(self, heads: dict[int, SSAHead], tokens: int, width: int):
        self._heads, self._tokens, self._width = dict(heads), tokens, width
        self._models: dict = {}

    def __getitem__(self, layer: int):
        if layer not in self._models:
            self._models[layer] = export_head(self._heads[layer], self._tokens, self._width)
        return self._models[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self._heads)

    def __len__(self) -> int:
        return len(self._heads)
