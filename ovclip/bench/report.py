"""Which prompt templates a data set's zero-shot accuracy is measured with (the choice is `ovclip.data.prompts`'s)."""

from __future__ import annotations

from ovclip.data.prompts import GENERIC_TEMPLATES, prompt_templates, template_set_of

__all__ = ["GENERIC_TEMPLATES", "templates_for"]


def templates_for(dataset_spec: str | None) -> list[str]:
    """The templates of `dataset_spec`'s template set (`template_set_of`): built-in and Fashion-MNIST specs get
    the shipped evaluation templates, image folders the generic ones."""
    return prompt_templates(template_set_of(dataset_spec))
