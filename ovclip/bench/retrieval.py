"""Retrieval, at full depth and with early exit side by side.

An image index stores embeddings computed without any label set, so an early-exit variant is measured here
under the folder's label-free exit rule (`exit_policy_embedding`, the rule `run_vision` applies when no class
embeddings are given):
- text->image recall@1/5/10 on a captions file (JSONL of {image, caption});
- on a labelled set, class-prompt retrieval: each class's prompt embedding ranks every image (precision@10,
  precision@100, mAP), and image->image: the share of each image's 10 nearest neighbours of its class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovclip.bench.fidelity import NEIGHBOURS, nearest_neighbours, same_class_precision
from ovclip.bench.metrics import class_prompt_retrieval, recall_at_k
from ovclip.bench.passes import AccuracyResult, accuracy_pass
from ovclip.progress import Progress, advance

NO_LABEL_FREE_RULE = "the folder has no label-free exit rule (exit_policy_embedding): exits need class scores"


def add_retrieval(prepared, dataset, captions_path: str | Path | None, strict: bool, progress: Progress | None):
    """Give each trained record a "retrieval" entry (see the module docstring)."""
    caps = None
    if captions_path is not None:
        from ovclip.data.datasets import load_captions

        caps = load_captions(captions_path, strict=strict, progress=progress)
    for p in prepared:
        if p.dep.manifest.trained and (caps is not None or p.measured is not None):
            p.record["retrieval"] = retrieval_fields(p, dataset, caps, progress)


def label_free_pass(p, dataset, progress: Progress | None = None) -> AccuracyResult | None:
    """The pass over `dataset` without class embeddings: the measured one where it already ran that way."""
    if not p.variant.early_exit or p.policy is p.dep.embedding_policy:
        return p.measured
    if p.label_free is None:
        name = p.variant.name
        tick = progress and (lambda f: advance(progress, f"{name} label-free exits", f))
        p.label_free = accuracy_pass(p.dep, dataset, None, True, 64, tick=tick)
    return p.label_free


def retrieval_fields(p, dataset, caps, progress: Progress | None = None) -> dict:
    ee = p.variant.early_exit
    if ee and p.dep.embedding_policy is None:
        return {"exit_rule": None, "note": NO_LABEL_FREE_RULE}
    out: dict = {"exit_rule": p.dep.embedding_policy.rule if ee else None}
    lf = label_free_pass(p, dataset, progress) if p.measured is not None else None
    if lf is not None:
        if ee:
            exits = [*p.dep.embedding_policy.exits, p.dep.num_layers]
            out["exit_histogram"] = {str(L): int(np.sum(lf.exit_layer == L)) for L in exits}
            out["flops_saving"] = lf.flops_saving
        labels = getattr(dataset, "labels", None)
        if labels is not None and p.class_emb is not None:
            out["class_prompts"] = class_prompt_retrieval(lf.embeddings, p.class_emb, labels)
            nn = neighbours_of(p, "label_free" if lf is not p.measured else "measured", lf.embeddings)
            out[f"same_class_P@{NEIGHBOURS}"] = same_class_precision(nn, labels)
    if caps is not None:
        out["captions"] = caption_recall(p.dep, caps, ee)
    return out


def neighbours_of(p, which: str, embeddings: np.ndarray) -> np.ndarray:
    """The nearest-neighbour lists of one pass of `p`, computed once."""
    if which not in p.neighbours:
        p.neighbours[which] = nearest_neighbours(embeddings, NEIGHBOURS)
    return p.neighbours[which]


def caption_recall(dep, caps, early_exit: bool, chunk: int = 32) -> dict:
    """Text->image recall@1/5/10: each caption ranks the caption images (embedded without class embeddings)."""
    n = len(caps.image_paths)
    images = [
        dep.run_vision(caps.pixels(np.arange(i, min(i + chunk, n)), dep.preprocess_config), early_exit=early_exit)
        for i in range(0, n, chunk)
    ]
    emb = np.concatenate([o.embeddings for o in images])
    out: dict = recall_at_k(dep.encode_text(caps.captions), emb, caps.image_index)
    out.update(n_captions=len(caps.captions), n_images=n)
    if early_exit:
        el = np.concatenate([o.exit_layer for o in images])
        out["exit_histogram"] = {str(L): int(np.sum(el == L)) for L in [*dep.embedding_policy.exits, dep.num_layers]}
    return out
