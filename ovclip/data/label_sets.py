"""Label sets: the class names a zero-shot classifier scores against, the names put into the prompts, and the
prompt templates. The built-in one is the shipped Fashion-MNIST classes; others are read from a file:

    ["cat", "dog"]                                            a JSON list of labels
    {"labels": [...], "prompt_names": [...], "templates": [...]}   prompt_names and templates optional
    cat\\ndog\\n                                                 a text file, one label per line

Templates default to the built-in evaluation templates (`calibration/` and `ovclip/assets/builtin/templates.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ovclip.data.builtin import builtin_classes
from ovclip.data.prompts import PLACEHOLDER, builtin_templates
from ovclip.errors import OvclipError

BUILTIN = "fashion-mnist"


@dataclass(frozen=True)
class LabelSet:
    labels: tuple[str, ...]  # shown in results
    prompt_names: tuple[str, ...]  # put into the templates
    templates: tuple[str, ...]
    name: str | None = None  # None for an ad-hoc list

    @property
    def key(self) -> tuple:
        """What the class embeddings depend on (a cache key)."""
        return (self.prompt_names, self.templates)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "labels": list(self.labels),
            "prompt_names": list(self.prompt_names),
            "templates": list(self.templates),
        }


def make_label_set(
    labels: list[str], templates: list[str] | None = None, *, prompt_names: list[str] | None = None, name=None
) -> LabelSet:
    """A label set from labels (prompt names default to the labels; templates to the built-in eval set)."""
    if not labels:
        raise OvclipError(f"label set {name or '(ad hoc)'}: no labels; give at least one")
    prompts = list(prompt_names) if prompt_names is not None else list(labels)
    if len(prompts) != len(labels):
        raise OvclipError(f"label set {name}: {len(labels)} labels but {len(prompts)} prompt names")
    tpl = list(templates) if templates else builtin_templates("eval")
    for t in tpl:
        if PLACEHOLDER not in t:
            raise OvclipError(f"label set {name}: template {t!r} has no '{{}}' where the label goes")
    return LabelSet(tuple(labels), tuple(prompts), tuple(tpl), name)


def builtin_label_set() -> LabelSet:
    labels, prompts = builtin_classes()
    return make_label_set(labels, prompt_names=prompts, name=BUILTIN)


def read_label_set(path: str | Path, name: str | None = None) -> LabelSet:
    """A label set from a JSON or text file (see the module docstring)."""
    p = Path(path)
    name = name or p.stem
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OvclipError(f"{p}: cannot read the label file ({e}); pass a readable JSON or text file") from None
    if p.suffix.lower() != ".json":
        return make_label_set([ln.strip() for ln in text.splitlines() if ln.strip()], name=name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise OvclipError(f"{p}: malformed JSON ({e})") from None
    if isinstance(data, list):
        data = {"labels": data}
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
        raise OvclipError(f'{p}: expected a JSON list of labels or an object with "labels"')
    for key in ("labels", "prompt_names", "templates"):
        v = data.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(s, str) and s.strip() for s in v)):
            raise OvclipError(f'{p}: "{key}" must be a list of non-empty strings')
    return make_label_set(data["labels"], data.get("templates"), prompt_names=data.get("prompt_names"), name=name)


def resolve_label_set(spec: str) -> LabelSet:
    """'fashion-mnist' (built in), NAME=FILE, FILE, or a comma-separated list of labels."""
    if spec == BUILTIN:
        return builtin_label_set()
    name, sep, file = spec.partition("=")
    if sep and Path(file).is_file():
        return read_label_set(file, name)
    if Path(spec).is_file():
        return read_label_set(spec)
    labels = [s.strip() for s in spec.split(",") if s.strip()]
    if not labels:
        raise OvclipError(f"labels {spec!r}: no labels; give 'fashion-mnist', a file, or 'cat,dog,...'")
    return make_label_set(labels, name="custom")
