"""Zero-shot prompts: templates x class names, and the prompt ensemble CLIP uses.

Ensembling (Radford et al. 2021): normalise each template's text embedding, average over templates,
normalise the mean again; the result is one class embedding per class.
"""

from __future__ import annotations

import numpy as np

from ovclip.data.builtin import builtin_template_sets
from ovclip.errors import OvclipError

PLACEHOLDER = "{}"


def builtin_templates(kind: str = "eval") -> list[str]:
    """The shipped prompt templates: `eval` (zero-shot evaluation) or `train` (exit-head training)."""
    sets = builtin_template_sets()
    if kind not in sets:
        raise OvclipError(f"unknown template set {kind!r}; use one of {', '.join(sorted(sets))}")
    return sets[kind]


def class_prompts(prompt_names: list[str], templates: list[str]) -> list[list[str]]:
    """prompts[c][t] = templates[t] with `{}` replaced by prompt_names[c].

    Plain substitution, not `str.format`, so names and templates may hold other braces.
    """
    if not templates:
        raise OvclipError("no prompt templates given; pass at least one template holding '{}'")
    for t in templates:
        if PLACEHOLDER not in t:
            raise OvclipError(f"prompt template {t!r} has no '{{}}' where the class name goes")
    return [[t.replace(PLACEHOLDER, name) for t in templates] for name in prompt_names]


def _normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, np.finfo(x.dtype).tiny)


def ensemble(embeddings: np.ndarray) -> np.ndarray:
    """(C, T, D) text embeddings -> (C, D) unit-norm class embeddings (mean of unit vectors, renormalised).

    Computed in float64; returned as float32 (or float64 when given float64).
    """
    e = np.asarray(embeddings)
    if e.ndim != 3 or 0 in e.shape:
        raise OvclipError(f"ensemble expects embeddings of shape (classes, templates, dim); got {e.shape}")
    if not np.all(np.isfinite(e)):
        raise OvclipError("ensemble: text embeddings hold NaN or infinity")
    out_dtype = np.float64 if e.dtype == np.float64 else np.float32
    mean = _normalise(e.astype(np.float64)).mean(axis=1)
    return _normalise(mean).astype(out_dtype)
