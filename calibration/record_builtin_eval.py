"""Record the built-in model's FP32 zero-shot top-1 on the shipped 2,000-image eval subset.

    python calibration/record_builtin_eval.py

Measured by ovclip itself (FP32 IR, f32 precision, the shipped prompts); tests/test_builtin.py checks
the shipped weights, tokenizer and preprocessing against this record.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from ovclip.bench.metrics import topk_accuracy  # noqa: E402
from ovclip.checkpoint import BUILTIN_MODEL_DIR, load_checkpoint  # noqa: E402
from ovclip.data.builtin import builtin_eval  # noqa: E402
from ovclip.data.prompts import builtin_templates  # noqa: E402
from ovclip.export import ExportOptions, export_deployment  # noqa: E402
from ovclip.runtime import Deployment  # noqa: E402

RECORD = BUILTIN_MODEL_DIR / "eval_record.json"


def measure(folder: Path) -> dict:
    dep = Deployment(folder)
    data = builtin_eval()
    cls = dep.class_embeddings(data.prompt_names, builtin_templates("eval"))
    scores = []
    for i in range(0, len(data), 250):
        idx = list(range(i, min(i + 250, len(data))))
        scores.append(dep.run_vision(data.pixels(idx, dep.preprocess_config), cls, early_exit=False).scores)
    import numpy as np

    s = np.concatenate(scores)
    return {
        "data": data.source,
        "n_images": len(data),
        "top1": topk_accuracy(s, data.labels, 1),
        "top5": topk_accuracy(s, data.labels, 5),
        "templates": builtin_templates("eval"),
        "how": "FP32 IR, INFERENCE_PRECISION_HINT f32, prompt ensemble over the eval templates",
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        export_deployment(load_checkpoint("builtin"), Path(tmp) / "fp32", ExportOptions(exits="none"))
        rec = measure(Path(tmp) / "fp32")
    RECORD.write_text(json.dumps(rec, indent=2))
    print(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
