"""Zero-shot prompts: which templates, templates x class names, and the prompt ensemble CLIP uses.

- Template sets are chosen by name (`prompt_templates("fashion-mnist")`), never guessed from a data set's
  description; `template_set_of` maps a `--data`/`--calibration` spec (builtin, fashion-mnist:..., a folder).
- A template is filled in one way: `{}` replaced by the class's prompt name (plain substitution, not
  `str.format`, so names and templates may hold other braces).
- Ensembling (Radford et al. 2021): normalise each template's text embedding, average over templates,
  normalise the mean again; the result is one class embedding per class.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from ovclip.data.builtin import builtin_template_sets
from ovclip.data.imagenet import imagenet_templates, is_imagenet_folder
from ovclip.errors import OvclipError
from ovclip.vectors import l2_normalize

PLACEHOLDER = "{}"
# "fashion-mnist": the shipped evaluation templates the built-in model was trained and measured with;
# "generic": photo templates for any other image set; "imagenet" / "imagenet-simple": OpenAI's 80 ImageNet templates
# / their 7-template subset, for folders in the ImageNet layout (`ovclip.data.imagenet`).
TemplateSet = Literal["fashion-mnist", "generic", "imagenet", "imagenet-simple"]
TEMPLATE_SETS: tuple[str, ...] = get_args(TemplateSet)
GENERIC_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a close-up photo of a {}."]


def builtin_templates(kind: str = "eval") -> list[str]:
    """The shipped prompt templates: `eval` (zero-shot evaluation) or `train` (exit-head training)."""
    sets = builtin_template_sets()
    if kind not in sets:
        raise OvclipError(f"unknown template set {kind!r}; use one of {', '.join(sorted(sets))}")
    return sets[kind]


def prompt_templates(kind: TemplateSet) -> list[str]:
    """The zero-shot templates of the named set."""
    if kind == "fashion-mnist":
        return builtin_templates("eval")
    if kind == "generic":
        return list(GENERIC_TEMPLATES)
    if kind in ("imagenet", "imagenet-simple"):
        return imagenet_templates("openai" if kind == "imagenet" else "simple")
    raise OvclipError(f"templates={kind!r}: choose one of {', '.join(TEMPLATE_SETS)}", params="templates")


def template_set_of(data_spec: str | None) -> TemplateSet:
    """The template set for a data spec as the CLI takes it: the built-in sets (also the default, None) and
    Fashion-MNIST splits -> "fashion-mnist"; a folder in the ImageNet layout -> "imagenet"; anything else (an
    image folder) -> "generic"."""
    if data_spec and is_imagenet_folder(data_spec):
        return "imagenet"
    spec = (data_spec or "builtin").lower()
    return "fashion-mnist" if spec.startswith(("builtin", "fashion-mnist")) else "generic"


def class_prompts(prompt_names: list[str], templates: list[str]) -> list[list[str]]:
    """prompts[c][t] = templates[t] with `{}` replaced by prompt_names[c]."""
    if not templates:
        raise OvclipError("no prompt templates given; pass at least one template holding '{}'")
    for t in templates:
        if PLACEHOLDER not in t:
            raise OvclipError(f"prompt template {t!r} has no '{{}}' where the class name goes")
    return [[t.replace(PLACEHOLDER, name) for t in templates] for name in prompt_names]


def all_prompts(prompt_names: list[str], templates: list[str]) -> list[str]:
    """`class_prompts` flattened class by class: every template of class 0, then of class 1, ... (the order
    `ensemble` expects once the text embeddings are reshaped to (classes, templates, dim))."""
    return [p for per_class in class_prompts(prompt_names, templates) for p in per_class]


def ensemble(embeddings: np.ndarray) -> np.ndarray:
    """(C, T, D) text embeddings -> (C, D) unit-norm class embeddings (mean of unit vectors, renormalised).

    Computed in the embeddings' dtype (float32 from the text IR), so the exit calibration and the runtime
    get the same class embeddings bit for bit.
    """
    e = np.asarray(embeddings)
    if e.ndim != 3 or 0 in e.shape:
        raise OvclipError(f"ensemble expects embeddings of shape (classes, templates, dim); got {e.shape}")
    if not np.all(np.isfinite(e)):
        raise OvclipError("ensemble: text embeddings hold NaN or infinity")
    if not np.issubdtype(e.dtype, np.floating):
        e = e.astype(np.float32)
    return l2_normalize(l2_normalize(e).mean(axis=1))
