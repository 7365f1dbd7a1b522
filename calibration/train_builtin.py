"""Recipe for ovclip's built-in model: a small CLIP trained on Fashion-MNIST, plus its shipped data.

    python calibration/train_builtin.py            # train (resumes from calibration/work/) and ship
    python calibration/train_builtin.py --assets-only   # only (re)write the shipped eval/calibration sets

Everything is seeded. The 60k training images are split once: 54k train the CLIP, 6k (the holdout)
are never trained on and become the shipped calibration set (NNCF, exit heads, gate, thresholds).
The test split is not looked at here except to draw the shipped 2,000-image evaluation subset.
Needs Debian's `dataset-fashion-mnist` and the `export` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from ovclip.data.fashion_mnist import load_split  # noqa: E402
from ovclip.preprocess import PreprocessConfig, resize_and_crop  # noqa: E402
from ovclip.tokenizer import ClipTokenizer  # noqa: E402

DATA = ROOT / "fashion_mnist"
WORK = ROOT / "work"
ASSETS = ROOT.parent / "ovclip" / "assets" / "builtin"


def load_recipe() -> tuple[dict, dict, dict]:
    model = json.loads((DATA / "model.json").read_text())
    classes = json.loads((DATA / "classes.json").read_text())
    templates = json.loads((DATA / "templates.json").read_text())
    return model, classes, templates


def split_train(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


def to_pixels(images: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 3, 224, 224) float32, the same numbers as ovclip.preprocess gives."""
    resized = np.stack([np.asarray(resize_and_crop(Image.fromarray(a, mode="L"), cfg)) for a in images])
    x = torch.from_numpy(resized).float() * np.float32(1 / 255)
    x = x[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(cfg.std, dtype=torch.float32)[None, :, None, None]
    return ((x - mean) / std).contiguous()


def augment(images: np.ndarray, rng: np.random.Generator, aug: dict) -> np.ndarray:
    """Flips, small shifts and random erasing on the 28x28 originals."""
    out = images.copy()
    n = len(out)
    flip = rng.random(n) < aug["hflip"]
    out[flip] = out[flip, :, ::-1]
    s = aug["max_shift_px"]
    padded = np.pad(out, ((0, 0), (s, s), (s, s)))
    dy, dx = rng.integers(0, 2 * s + 1, n), rng.integers(0, 2 * s + 1, n)
    for i in range(n):
        out[i] = padded[i, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28]
        if rng.random() < aug["erase_prob"]:
            h, w = rng.integers(4, 12, 2)
            y0, x0 = rng.integers(0, 28 - h), rng.integers(0, 28 - w)
            out[i, y0 : y0 + h, x0 : x0 + w] = 0
    return out


def build_model(spec: dict, seed: int):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=spec["text_config"], vision_config=spec["vision_config"], projection_dim=spec["projection_dim"]
    )
    return CLIPModel(cfg)


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def text_embeddings(model, ids: torch.Tensor) -> torch.Tensor:
    return F.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)


def image_embeddings(model, pixels: torch.Tensor) -> torch.Tensor:
    return F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)


def prompt_ids(tok: ClipTokenizer, names: list[str], templates: list[str], length: int) -> torch.Tensor:
    """(templates, classes, length) token ids; short prompts lose nothing by truncating the padding."""
    ids = np.stack([tok([t.format(c) for c in names]) for t in templates])
    assert (ids[..., length:] == 0).all(), "a training prompt is longer than text_len"
    return torch.from_numpy(ids[..., :length])


@torch.no_grad()
def zero_shot_top1(model, images, labels, class_ids, cfg, batch=256) -> float:
    model.eval()
    t, c, n = class_ids.shape
    txt = text_embeddings(model, class_ids.reshape(t * c, n)).reshape(t, c, -1).mean(0)
    txt = F.normalize(txt, dim=-1)
    correct = 0
    for i in range(0, len(images), batch):
        emb = image_embeddings(model, to_pixels(images[i : i + batch], cfg))
        correct += (emb @ txt.T).argmax(-1).eq(torch.from_numpy(labels[i : i + batch])).sum().item()
    model.train()
    return correct / len(images)


def save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def write_assets(spec: dict, classes: dict, templates: dict) -> None:
    """The shipped data: 2,000 test images (200 per class) and the 6,000-image training holdout."""
    ASSETS.mkdir(parents=True, exist_ok=True)
    seed = spec["train"]["seed"]
    test_x, test_y = load_split("test")
    rng = np.random.default_rng(seed + 1)
    per = spec["ship"]["eval_per_class"]
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(test_y == k), per, replace=False) for k in range(10)]))
    np.savez_compressed(
        ASSETS / "eval_fashion_mnist_test2000.npz", images=test_x[idx], labels=test_y[idx], source_index=idx
    )
    train_x, train_y = load_split("train")
    _, hold = split_train(len(train_x), spec["train"]["holdout"], seed)
    np.savez_compressed(
        ASSETS / "calibration_fashion_mnist_train6000.npz",
        images=train_x[hold],
        labels=train_y[hold],
        source_index=hold,
    )
    (ASSETS / "classes.json").write_text(json.dumps(classes, indent=2))
    (ASSETS / "templates.json").write_text(json.dumps(templates, indent=2))
    print(f"wrote shipped eval ({len(idx)}) and calibration ({len(hold)}) sets to {ASSETS}")


def train(spec: dict, classes: dict, templates: dict, epochs: int | None) -> None:
    hp = spec["train"]
    epochs = epochs or hp["epochs"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = PreprocessConfig()
    tok = ClipTokenizer.builtin()
    train_x, train_y = load_split("train")
    tr, hold = split_train(len(train_x), hp["holdout"], hp["seed"])
    names = classes["prompt_names"]
    train_ids = prompt_ids(tok, names, templates["train"], hp["text_len"])
    eval_ids = prompt_ids(tok, names, templates["eval"], hp["text_len"])

    model = build_model(spec, hp["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps_per_epoch = len(tr) // hp["batch_size"]
    total = steps_per_epoch * epochs
    warm = max(1, int(hp["warmup_fraction"] * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return hp["lr"] * (step + 1) / warm
        return hp["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    WORK.mkdir(parents=True, exist_ok=True)
    state_path = WORK / "state.pt"
    step, elapsed, history = 0, 0.0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        if state["step"] < total:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            step, elapsed = state["step"], state["elapsed"]
            history = json.loads(state["history"])
            if state["total"] != total:  # the epoch count was changed part-way: say so in the log
                history.append(
                    {"schedule_changed_at_step": step, "from_total_steps": state["total"], "to_total_steps": total}
                )
            print(f"resuming at step {step}/{total} ({elapsed / 60:.1f} min trained so far)")
        else:
            print("saved state is past this schedule's end; starting over")
    model.train()
    t0 = time.time() - elapsed
    cols = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}")]
    with Progress(*cols, TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")) as bar:
        task = bar.add_task("training", total=total, completed=step, info="")
        while step < total:
            epoch, k = divmod(step, steps_per_epoch)
            order = tr[np.random.default_rng(hp["seed"] * 1000 + epoch).permutation(len(tr))]
            batch = order[k * hp["batch_size"] : (k + 1) * hp["batch_size"]]
            rng = np.random.default_rng([hp["seed"], step])
            pixels = to_pixels(augment(train_x[batch], rng, hp["augment"]), cfg)
            labels = torch.from_numpy(train_y[batch])
            template = torch.from_numpy(rng.integers(0, train_ids.shape[0], len(names)))
            ids = train_ids[template, torch.arange(len(names))]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            img = image_embeddings(model, pixels)
            txt = text_embeddings(model, ids)
            scale = model.logit_scale.exp().clamp(max=100)
            logits = scale * img @ txt.T
            loss_i = F.cross_entropy(logits, labels, label_smoothing=hp["label_smoothing"])
            same = F.one_hot(labels, len(names)).float().T
            present = same.sum(1) > 0
            target = same[present] / same[present].sum(1, keepdim=True)
            loss_t = -(target * F.log_softmax(logits.T[present], dim=-1)).sum(1).mean()
            loss = loss_i + 0.5 * loss_t
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"])
            opt.step()
            step += 1
            bar.update(task, completed=step, info=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
            end_of_epoch = step % steps_per_epoch == 0
            if step % 50 == 0 or end_of_epoch or step == total:
                if end_of_epoch:
                    acc = zero_shot_top1(model, train_x[hold], train_y[hold], eval_ids, cfg)
                    history.append({"epoch": epoch + 1, "step": step, "holdout_top1": acc, "loss": loss.item()})
                    bar.console.print(f"epoch {epoch + 1}: holdout zero-shot top-1 {acc:.4f}")
                state = {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "total": total,
                    "elapsed": time.time() - t0,
                    "history": json.dumps(history),
                }
                save_state(state_path, state)
    elapsed = time.time() - t0
    ship(model, spec, history, elapsed, epochs)


def ship(model, spec: dict, history: list, elapsed: float, epochs: int) -> None:
    out = ASSETS / "model"
    tmp = ASSETS / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp, safe_serialization=True)
    PreprocessConfig().save(tmp / "preprocessor_config.json")
    log = {
        "recipe": "calibration/train_builtin.py",
        "epochs": epochs,
        "train_images": 60000 - spec["train"]["holdout"],
        "training_minutes": round(elapsed / 60, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "history": history,
    }
    (tmp / "training_log.json").write_text(json.dumps(log, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    print(f"shipped model to {out} after {elapsed / 60:.1f} min of training")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets-only", action="store_true", help="only write the shipped eval/calibration sets")
    ap.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    args = ap.parse_args()
    spec, classes, templates = load_recipe()
    write_assets(spec, classes, templates)
    if not args.assets_only:
        train(spec, classes, templates, args.epochs)


if __name__ == "__main__":
    main()
