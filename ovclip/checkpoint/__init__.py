"""Resolve a `--model SRC` string into a torch `transformers.CLIPModel` plus tokenizer, preprocessing and provenance.

    ck = load_checkpoint("random:vit-b-32")   # or None/'builtin', a folder, a .safetensors/.pt file, a hub id
    ck.model, ck.tokenizer, ck.preprocess, ck.trained

torch and transformers are imported only when a checkpoint is loaded.
"""

from ovclip.checkpoint.random_models import known_random_models
from ovclip.checkpoint.sources import BUILTIN_MODEL_DIR, KINDS, LoadedCheckpoint, load_checkpoint

__all__ = ["BUILTIN_MODEL_DIR", "KINDS", "LoadedCheckpoint", "known_random_models", "load_checkpoint"]
