"""The `/v1` request contract, framework-free: JSON bodies, base64 images, label lists, options.

    POST /v1/embed/image   multipart field `file` (repeatable) | JSON {"images": ["<base64>", ...]}
    POST /v1/embed/text    JSON {"texts": ["...", ...]}
    POST /v1/classify      the images, plus `labels` (JSON list, or a comma-separated form field) or `label_set`;
                           optional `templates` (list of prompts holding "{}"), `top_k`
    any image endpoint     optional `early_exit` (true/false, default true): false runs every image to full depth

Every function here raises `RequestError` (a 4xx status and one line) on bad input.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ovclip.serve.decode import Limits
from ovclip.serve.errors import RequestError, bad_request, too_large


@dataclass(frozen=True)
class ClassifyOptions:
    labels: list[str] | None  # ad-hoc labels, or None when a saved label set is named
    label_set: str | None
    templates: list[str] | None  # None: the label set's own, or the built-in evaluation templates
    top_k: int | None  # None: every label


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    if not body.strip():
        raise bad_request("empty request body; send a JSON object", kind="bad_json")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"malformed JSON body ({e})", kind="bad_json") from None
    if not isinstance(obj, dict):
        raise bad_request(f"the JSON body must be an object, not {type(obj).__name__}", kind="bad_json")
    return obj


def images_from_json(obj: dict[str, Any], limits: Limits) -> list[tuple[str, bytes]]:
    """[(name, bytes)] from {"images": ["<base64>", ...]}; a data URL prefix (data:image/png;base64,) is allowed."""
    images = obj.get("images")
    if images is None:
        raise bad_request('no images: send JSON {"images": ["<base64>", ...]} or multipart field "file"')
    if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
        raise bad_request('"images" must be a list of base64 strings')
    check_count(len(images), limits)
    out = []
    for i, s in enumerate(images):
        if s.startswith("data:") and "," in s:
            s = s.split(",", 1)[1]
        try:
            out.append((f"images[{i}]", base64.b64decode(s, validate=True)))
        except (binascii.Error, ValueError):
            raise bad_request(f"images[{i}]: not valid base64", kind="not_an_image") from None
    return out


def check_count(n: int, limits: Limits) -> None:
    if n == 0:
        raise bad_request("no images in the request; send at least one")
    if n > limits.max_images:
        raise too_large(f"{n} images in one request is over the server's limit of {limits.max_images}; split it")


def texts_from_json(obj: dict[str, Any], limits: Limits) -> list[str]:
    texts = obj.get("texts")
    if texts is None:
        raise bad_request('no texts: send JSON {"texts": ["...", ...]}')
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise bad_request('"texts" must be a list of strings')
    if not texts:
        raise bad_request('"texts" is empty; send at least one text')
    if len(texts) > limits.max_texts:
        raise too_large(f"{len(texts)} texts in one request is over the server's limit of {limits.max_texts}")
    return texts


def _string_list(value: Any, name: str, *, comma: bool) -> list[str]:
    """A list of strings from a JSON list, or from a form string holding a JSON list or (if `comma`) a,b,c."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise bad_request(f'"{name}": malformed JSON list ({e})', kind="bad_json") from None
        elif comma:
            value = [p.strip() for p in text.split(",") if p.strip()] if text else []
        else:
            value = [text]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f'"{name}" must be a list of strings')
    return [v.strip() for v in value]


def parse_bool(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise bad_request(f'"{name}" must be true or false, not {value!r}')


def _positive_int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise bad_request(f'"{name}" must be a positive integer, not {value!r}') from None
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and value != n):
        raise bad_request(f'"{name}" must be a positive integer, not {value!r}')
    return n


def classify_options(fields: dict[str, Any], limits: Limits) -> ClassifyOptions:
    """`labels` or `label_set`, `templates`, `top_k` from a JSON object or from form fields."""
    raw_labels, label_set = fields.get("labels"), fields.get("label_set")
    if raw_labels is not None and label_set is not None:
        raise bad_request('give "labels" or "label_set", not both')
    if raw_labels is None and label_set is None:
        raise bad_request('no labels: give "labels" (a list, or a comma-separated form field) or "label_set"')
    labels = None
    if raw_labels is not None:
        labels = _string_list(raw_labels, "labels", comma=True)
        if not labels or not all(labels):
            what = "is empty" if not labels else "holds an empty label"
            raise RequestError(400, "empty_labels", f'"labels" {what}; give at least one non-empty label')
        if len(labels) > limits.max_labels:
            raise too_large(f"{len(labels)} labels is over the server's limit of {limits.max_labels}")
    if label_set is not None and not isinstance(label_set, str):
        raise bad_request('"label_set" must be a string naming a label set (GET /v1/label_sets lists them)')
    templates = fields.get("templates")
    if templates is not None:
        templates = _string_list(templates, "templates", comma=False)
        bad = [t for t in templates if "{}" not in t]
        if not templates or bad:
            what = "is empty" if not templates else f"has {bad[0]!r} without {{}} where the label goes"
            raise bad_request(f'"templates" {what}')
    return ClassifyOptions(labels, label_set, templates, _positive_int(fields.get("top_k"), "top_k"))
