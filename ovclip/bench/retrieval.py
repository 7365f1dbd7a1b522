"""Text->image recall@k on a captions file (JSONL of {image, caption}), full depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovclip.bench.metrics import recall_at_k
from ovclip.progress import Progress
from ovclip.runtime import Deployment


def retrieval_records(
    folders, settings, captions_path: Path, strict: bool, progress: Progress | None = None
) -> list[dict]:
    from ovclip.data.datasets import load_captions

    caps = load_captions(captions_path, strict=strict, progress=progress)
    out = []
    for folder in folders:
        dep = Deployment(folder, settings.device, hint=settings.hint)
        if not dep.manifest.trained:
            continue
        images = []
        for i in range(0, len(caps.image_paths), 32):
            px = caps.pixels(np.arange(i, min(i + 32, len(caps.image_paths))), dep.preprocess_config)
            images.append(dep.run_vision(px, early_exit=False).embeddings)
        text = dep.encode_text(caps.captions)
        out.append({"model": str(Path(folder)), "recall": recall_at_k(text, np.concatenate(images), caps.image_index)})
    return out
