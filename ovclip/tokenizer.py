"""CLIP's byte-level BPE tokenizer, built from the vocabulary that ships in the package.

The runtime needs only the `tokenizers` library: a deployment folder carries a `tokenizer.json`
written by :func:`build_clip_tokenizer`, and :class:`ClipTokenizer` encodes text to the fixed-length,
zero-padded id arrays that OpenAI's CLIP text encoder takes.
"""

from __future__ import annotations

import gzip
import html
import json
import unicodedata
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
CONTEXT_LENGTH = 77
# CLIP's pre-tokenisation pattern: special tokens, English contractions, letter runs, single digits,
# and runs of other non-space characters.
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1))
    keep += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    rest = [b for b in range(256) if b not in table]
    for extra, b in enumerate(rest):
        table[b] = chr(256 + extra)
    return table  # insertion order (printable bytes first) fixes the ids


def _vocab_path() -> Path:
    return Path(str(resources.files("ovclip") / "assets" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"))


def build_clip_tokenizer(bpe_path: str | Path | None = None) -> Tokenizer:
    """Build CLIP's tokenizer (49,408 ids) from the gzipped BPE merge list."""
    with gzip.open(bpe_path or _vocab_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_byte_to_unicode().values())
    symbols = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab = {s: i for i, s in enumerate(symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=EOT, fuse_unk=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([SOT, EOT])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])]
    )
    tok.enable_truncation(max_length=CONTEXT_LENGTH)
    return tok


def _clean(text: str) -> str:
    """CLIP's text clean-up before BPE: fix mojibake, unescape HTML twice, collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # pragma: no cover - ftfy is a declared dependency
        pass
    text = html.unescape(html.unescape(text))
    return unicodedata.normalize("NFC", " ".join(text.split())).lower()  # Python lower: final sigma, as OpenAI


class ClipTokenizer:
    """Encode strings to (N, context_length) int64 ids, zero padded, EOT kept when truncating."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = CONTEXT_LENGTH):
        self._tok = tokenizer
        self.context_length = context_length
        self._tok.enable_truncation(max_length=context_length)
        self.sot_id = tokenizer.token_to_id(SOT)
        self.eot_id = tokenizer.token_to_id(EOT)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
        return cls(Tokenizer.from_file(str(path)), context_length)

    @classmethod
    def builtin(cls, context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
        # a copy: enable_truncation() in __init__ must not change other instances
        return cls(Tokenizer.from_str(_builtin_tokenizer().to_str()), context_length)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def to_json(self) -> str:
        return self._tok.to_str()

    def __call__(self, texts: str | list[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, enc in enumerate(self._tok.encode_batch([_clean(t) for t in texts])):
            ids = enc.ids
            out[i, : len(ids)] = ids
        return out


@lru_cache(maxsize=1)
def _builtin_tokenizer() -> Tokenizer:
    return Tokenizer.from_str(build_clip_tokenizer().to_str())


def tokenizer_config(context_length: int = CONTEXT_LENGTH) -> dict:
    return {"context_length": context_length, "pad_id": 0, "sot": SOT, "eot": EOT}


def write_tokenizer(folder: Path, tokenizer: ClipTokenizer) -> None:
    tokenizer.save(folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tokenizer.context_length)))
