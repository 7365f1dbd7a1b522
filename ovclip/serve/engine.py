"""What one server replica computes, without Ray: batches of vision jobs through a `Deployment`, label sets,
and the response bodies.

Requests batched together may ask for different things (embed without labels, classify against one label set
or another, early exit off); `run_jobs` groups a batch by what it asks and runs each group as one call of the
deployment's compacting early-exit graph, then hands every job back its own rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ovclip.data.label_sets import LabelSet, make_label_set
from ovclip.runtime import Deployment, VisionOutput
from ovclip.serve.errors import RequestError
from ovclip.serve.pixels import Pixels
from ovclip.serve.protocol import ClassifyOptions


@dataclass
class VisionJob:
    """Some images of one request and what to run them against."""

    pixels: np.ndarray  # (N, 3, S, S) preprocessed
    early_exit: bool = True
    labels: LabelSet | None = None
    class_embeddings: np.ndarray | None = None  # (C, E) unit-norm: the label set's, or given (KServe v2)
    queued_at: float = field(default=0.0, compare=False)  # perf_counter when submitted (batching wait)

    @property
    def group(self) -> tuple:
        if self.labels is not None:
            return (self.early_exit, "labels", self.labels.key)
        if self.class_embeddings is not None:
            digest = hashlib.sha1(np.ascontiguousarray(self.class_embeddings).tobytes()).hexdigest()
            return (self.early_exit, "given", self.class_embeddings.shape, digest)
        return (self.early_exit, "none")


class Engine:
    def __init__(self, dep: Deployment, label_sets: dict[str, LabelSet]):
        self.dep = dep
        self.label_sets = dict(label_sets)
        self.pixels = Pixels(dep.preprocess_config)

    # -- inputs ------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, 3, S, S) float32, the numbers of `Deployment.preprocess`."""
        return self.pixels(images)

    def label_set(self, opts: ClassifyOptions) -> LabelSet:
        """The request's labels: a saved set by name (its templates unless the request gives some), or ad hoc."""
        if opts.label_set is not None:
            saved = self.label_sets.get(opts.label_set)
            if saved is None:
                known = ", ".join(sorted(self.label_sets)) or "none"
                raise RequestError(404, "unknown_label_set", f"unknown label_set {opts.label_set!r}; known: {known}")
            if opts.templates is None:
                return saved
            return make_label_set(list(saved.labels), opts.templates, prompt_names=list(saved.prompt_names))
        return make_label_set(opts.labels or [], opts.templates)

    def class_embeddings(self, labels: LabelSet) -> np.ndarray:
        """(C, E) unit-norm class embeddings; the deployment caches them per label set (LRU)."""
        return self.dep.class_embeddings(list(labels.prompt_names), list(labels.templates))

    # -- compute -----------------------------------------------------------------------------------
    def run_jobs(self, jobs: Sequence[VisionJob]) -> list[VisionOutput]:
        """One deployment call per group of jobs that ask the same thing; outputs in job order."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.group, []).append(i)
        results: list[VisionOutput | None] = [None] * len(jobs)
        for members in groups.values():
            first = jobs[members[0]]
            cls = first.class_embeddings
            if cls is None and first.labels is not None:
                cls = self.class_embeddings(first.labels)
            pixels = np.concatenate([jobs[i].pixels for i in members]) if len(members) > 1 else first.pixels
            out = self.dep.run_vision(pixels, cls, early_exit=first.early_exit)
            start = 0
            for i in members:
                n = len(jobs[i].pixels)
                rows = slice(start, start + n)
                scores = None if out.scores is None else out.scores[rows]
                results[i] = VisionOutput(out.embeddings[rows], out.exit_layer[rows], scores)
                start += n
        return results  # type: ignore[return-value]

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.dep.encode_text(list(texts))


def classify_results(out: VisionOutput, labels: LabelSet, top_k: int | None) -> list[dict]:
    """Per image: labels sorted by score (logit_scale x cosine), the scores, softmax probabilities over every
    label of the set, and the block the image left the tower after."""
    scores = np.asarray(out.scores, dtype=np.float64)
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    k = len(labels.labels) if top_k is None else min(top_k, len(labels.labels))
    results = []
    for i in range(len(scores)):
        order = np.argsort(-scores[i], kind="stable")[:k]
        results.append(
            {
                "labels": [labels.labels[j] for j in order],
                "scores": [float(out.scores[i, j]) for j in order],
                "probabilities": [float(probs[i, j]) for j in order],
                "exit_block": int(out.exit_layer[i]),
            }
        )
    return results


def embed_result(out: VisionOutput) -> dict:
    return {"embeddings": out.embeddings.tolist(), "exit_blocks": out.exit_layer.astype(int).tolist()}
