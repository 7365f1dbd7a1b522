"""Which prompt templates a data set's zero-shot accuracy is measured with."""

from __future__ import annotations

GENERIC_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a close-up photo of a {}."]


def templates_for(dataset_spec: str | None) -> list[str]:
    from ovclip.data.prompts import builtin_templates

    spec = (dataset_spec or "builtin").lower()
    if spec.startswith("builtin") or spec.startswith("fashion-mnist"):
        return builtin_templates("eval")
    return GENERIC_TEMPLATES
