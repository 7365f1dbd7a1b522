"""Recipe for ovclip's built-in model: a small CLIP trained on Fashion-MNIST, plus its shipped data.

    python calibration/train_builtin.py                     # train (resumes from calibration/work/) and ship
    python calibration/train_builtin.py --device cuda       # on a GPU (auto picks it when present)
    python calibration/train_builtin.py --stop-after 500    # run 500 steps, save, stop; the next run continues
    python calibration/train_builtin.py --assets-only       # only (re)write the shipped eval/calibration sets

Everything is seeded. The 60k training images are split once: 54k train the CLIP, 6k (the holdout)
are never trained on and become the shipped calibration set (NNCF, exit heads, gate, thresholds).
The test split is not looked at here except to draw the shipped 2,000-image evaluation subset.
Needs Debian's `dataset-fashion-mnist` and the `export` extra (torch, transformers).

Speed: the whole training split lives on the device as uint8 28x28 images; each batch is augmented (flip,
shift, erase) and preprocessed there in torch (`ovclip.preprocess_torch`: Pillow's resize computed exactly,
so the training pixels are bit for bit what `ovclip.preprocess` gives at inference). `--precision auto`
trains under bf16 autocast on CPUs with AMX or AVX512_BF16 (read from /proc/cpuinfo), in fp32 elsewhere
(also on CUDA, where the schedule was measured in fp32). A run is resumable: the state (weights, optimiser,
step, log) is saved every `--save-every` steps, at each epoch's end, at `--stop-after`, and on SIGINT or
SIGTERM; every step's data order and augmentation are drawn from (seed, step), so a resumed run does what an
uninterrupted one would have done.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from ovclip.data.fashion_mnist import load_split  # noqa: E402
from ovclip.preprocess import PreprocessConfig  # noqa: E402
from ovclip.preprocess_torch import TorchPreprocess  # noqa: E402
from ovclip.tokenizer import ClipTokenizer  # noqa: E402

DATA = ROOT / "fashion_mnist"
WORK = ROOT / "work"
ASSETS = ROOT.parent / "ovclip" / "assets" / "builtin"
STATE_FILE = "state.pt"


def load_recipe() -> tuple[dict, dict, dict]:
    model = json.loads((DATA / "model.json").read_text())
    classes = json.loads((DATA / "classes.json").read_text())
    templates = json.loads((DATA / "templates.json").read_text())
    return model, classes, templates


def split_train(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


# --------------------------------------------------------------------------------------------------
# device and precision


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}); use --device cpu")
    return torch.device(name)


def pick_precision(name: str, device: torch.device, flags: set[str]) -> str:
    """'bf16' (autocast) or 'fp32'. auto: bf16 on a CPU with AMX or AVX512_BF16, fp32 otherwise."""
    if name != "auto":
        return name
    if device.type == "cpu" and flags & {"amx_bf16", "avx512_bf16"}:
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# pixels


def to_pixels(images: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 3, size, size) float32, the same numbers as ovclip.preprocess gives."""
    return TorchPreprocess(*images.shape[1:], cfg).gray(torch.from_numpy(np.ascontiguousarray(images)))


def augment_batch(x: torch.Tensor, rng: np.random.Generator, aug: dict) -> torch.Tensor:
    """Flips, small shifts and random erasing of (N, H, W) uint8 originals, on their device. All random
    numbers come from `rng` (numpy), so the result does not depend on the device."""
    n, h, w = x.shape
    s = aug["max_shift_px"]
    flip = rng.random(n) < aug["hflip"]
    dy, dx = rng.integers(0, 2 * s + 1, n), rng.integers(0, 2 * s + 1, n)
    erase = rng.random(n) < aug["erase_prob"]
    eh, ew = rng.integers(4, 12, n), rng.integers(4, 12, n)
    ey, ex = rng.integers(0, h - eh), rng.integers(0, w - ew)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a)).to(x.device)

    x = torch.where(t(flip)[:, None, None], x.flip(-1), x)
    padded = F.pad(x, (s, s, s, s))
    rows = (t(dy)[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (t(dx)[:, None] + torch.arange(w, device=x.device))[:, None, :]
    x = padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]
    yy, xx = torch.arange(h, device=x.device)[None, :, None], torch.arange(w, device=x.device)[None, None, :]
    inside_y = (yy >= t(ey)[:, None, None]) & (yy < t(ey + eh)[:, None, None])
    box = inside_y & (xx >= t(ex)[:, None, None]) & (xx < t(ex + ew)[:, None, None])
    return x.masked_fill(box & t(erase)[:, None, None], 0)


def augment(images: np.ndarray, rng: np.random.Generator, aug: dict) -> np.ndarray:
    """`augment_batch` on numpy arrays (CPU)."""
    return augment_batch(torch.from_numpy(np.ascontiguousarray(images)), rng, aug).numpy()


# --------------------------------------------------------------------------------------------------
# model


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
    return F.normalize(_features(model.get_text_features(input_ids=ids)).float(), dim=-1)


def image_embeddings(model, pixels: torch.Tensor) -> torch.Tensor:
    return F.normalize(_features(model.get_image_features(pixel_values=pixels)).float(), dim=-1)


def prompt_ids(tok: ClipTokenizer, names: list[str], templates: list[str], length: int) -> torch.Tensor:
    """(templates, classes, length) token ids; short prompts lose nothing by truncating the padding."""
    ids = np.stack([tok([t.format(c) for c in names]) for t in templates])
    if (ids[..., length:] != 0).any():
        raise SystemExit(f"a training prompt is longer than text_len {length}; raise text_len in model.json")
    return torch.from_numpy(ids[..., :length])


@torch.no_grad()
def zero_shot_top1(model, images: torch.Tensor, labels: torch.Tensor, class_ids, prep, precision, batch=256):
    """Top-1 of (N, 28, 28) uint8 images (on the model's device) against the prompt-ensembled classes."""
    model.eval()
    t, c, n = class_ids.shape
    with autocast(images.device, precision):
        txt = F.normalize(text_embeddings(model, class_ids.reshape(t * c, n)).reshape(t, c, -1).mean(0), dim=-1)
        correct = 0
        for i in range(0, len(images), batch):
            emb = image_embeddings(model, prep.gray(images[i : i + batch]))
            correct += (emb @ txt.T).argmax(-1).eq(labels[i : i + batch]).sum().item()
    model.train()
    return correct / len(images)


# --------------------------------------------------------------------------------------------------
# training


@dataclass
class Data:
    """Training and holdout images (uint8, on the device) with their labels, and the prompts."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    hold_x: torch.Tensor
    hold_y: torch.Tensor
    train_ids: torch.Tensor  # (templates, classes, text_len)
    eval_ids: torch.Tensor


@dataclass
class Run:
    spec: dict
    data: Data
    device: torch.device
    precision: str
    work: Path
    epochs: int | None = None
    stop_after: int | None = None  # steps to run in this call, then save and return
    save_every: int = 50
    should_stop: Callable[[], bool] = lambda: False  # checked between steps (signals)
    log: Callable[[str], None] = print
    history: list = field(default_factory=list)


def make_data(spec, classes, templates, images, labels, hold_images, hold_labels, device) -> Data:
    hp = spec["train"]
    tok = ClipTokenizer.builtin()
    names = classes["prompt_names"]

    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return Data(
        dev(images),
        dev(labels.astype(np.int64)),
        dev(hold_images),
        dev(hold_labels.astype(np.int64)),
        prompt_ids(tok, names, templates["train"], hp["text_len"]).to(device),
        prompt_ids(tok, names, templates["eval"], hp["text_len"]).to(device),
    )


def fingerprint(spec: dict, data: Data) -> str:
    """What a saved state must agree on to be resumed: the recipe (all but the epoch count) and the data."""
    recipe = {k: v for k, v in spec.items() if k not in ("comment", "ship")}
    recipe["train"] = {k: v for k, v in spec["train"].items() if k != "epochs"}
    sizes = [len(data.train_x), len(data.hold_x), list(data.train_ids.shape)]
    probe = data.train_x[:: max(1, len(data.train_x) // 64)].cpu().numpy().tobytes()
    blob = json.dumps([recipe, sizes], sort_keys=True).encode() + probe
    return hashlib.sha256(blob).hexdigest()[:16]


def lr_at(step: int, total: int, hp: dict) -> float:
    warm = max(1, int(hp["warmup_fraction"] * total))
    if step < warm:
        return hp["lr"] * (step + 1) / warm
    return hp["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_step(model, opt, run: Run, step: int, total: int, order: np.ndarray, prep: TorchPreprocess) -> float:
    hp, d = run.spec["train"], run.data
    spe = len(d.train_x) // hp["batch_size"]
    k = step % spe
    batch = torch.from_numpy(order[k * hp["batch_size"] : (k + 1) * hp["batch_size"]]).to(run.device)
    rng = np.random.default_rng([hp["seed"], step])
    pixels = prep.gray(augment_batch(d.train_x[batch], rng, hp["augment"]))
    labels = d.train_y[batch]
    n_cls = d.train_ids.shape[1]
    template = torch.from_numpy(rng.integers(0, d.train_ids.shape[0], n_cls)).to(run.device)
    ids = d.train_ids[template, torch.arange(n_cls, device=run.device)]
    for g in opt.param_groups:
        g["lr"] = lr_at(step, total, hp)
    with autocast(run.device, run.precision):
        img = image_embeddings(model, pixels)
        txt = text_embeddings(model, ids)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
    loss_i = F.cross_entropy(logits, labels, label_smoothing=hp["label_smoothing"])
    same = F.one_hot(labels, n_cls).float().T
    present = same.sum(1) > 0
    target = same[present] / same[present].sum(1, keepdim=True)
    loss_t = -(target * F.log_softmax(logits.T[present], dim=-1)).sum(1).mean()
    loss = loss_i + 0.5 * loss_t
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"])
    opt.step()
    return float(loss.detach())


def save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume(run: Run, model, opt, total: int, fp: str) -> tuple[int, float]:
    """Load the saved state if there is one for this recipe; returns (step, seconds trained so far)."""
    path = run.work / STATE_FILE
    if not path.exists():
        return 0, 0.0
    state = torch.load(path, map_location=run.device, weights_only=True)
    if state.get("fingerprint") != fp:
        raise SystemExit(
            f"{path} was saved by a different recipe or data set; delete it (or pass --restart) to start over"
        )
    if state["step"] >= total:
        run.log(f"{path}: the saved run is past this schedule's end ({state['step']} >= {total} steps); starting over")
        return 0, 0.0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    run.history[:] = json.loads(state["history"])
    if state["total"] != total:  # the epoch count was changed part-way: say so in the log
        run.history.append({"schedule_changed_at_step": state["step"], "from_total_steps": state["total"]})
    run.log(f"resuming at step {state['step']}/{total} ({state['elapsed'] / 60:.1f} min trained so far)")
    return state["step"], state["elapsed"]


def train(run: Run) -> tuple[object, int, int, float]:
    """Train (or continue) per `run`; returns (model, step reached, total steps, seconds of training)."""
    hp, d = run.spec["train"], run.data
    epochs = run.epochs or hp["epochs"]
    spe = len(d.train_x) // hp["batch_size"]
    total = spe * epochs
    model = build_model(run.spec, hp["seed"]).to(run.device)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    run.work.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(run.spec, d)
    step, elapsed = _resume(run, model, opt, total, fp)
    run.history.append({"segment_from_step": step, "device": str(run.device), "precision": run.precision})
    prep = TorchPreprocess(*d.train_x.shape[1:], PreprocessConfig(size=run.spec["vision_config"]["image_size"]))
    prep = _on(prep, run.device)
    model.train()
    t0, first, orders = time.time() - elapsed, step, {}
    while step < total and not (run.stop_after is not None and step - first >= run.stop_after):
        if run.should_stop():
            run.log(f"stopping at step {step} on request; run again to continue")
            break
        epoch = step // spe
        if epoch not in orders:  # this epoch's data order, a function of (seed, epoch) only
            orders = {epoch: np.random.default_rng(hp["seed"] * 1000 + epoch).permutation(len(d.train_x))}
        order = orders[epoch]
        loss = train_step(model, opt, run, step, total, order, prep)
        step += 1
        end_of_epoch = step % spe == 0
        if end_of_epoch:
            acc = zero_shot_top1(model, d.hold_x, d.hold_y, d.eval_ids, prep, run.precision)
            run.history.append({"epoch": epoch + 1, "step": step, "holdout_top1": acc, "loss": loss})
            run.log(f"epoch {epoch + 1}/{epochs} (step {step}/{total}): loss {loss:.3f}, holdout top-1 {acc:.4f}")
        if step % run.save_every == 0 or end_of_epoch or step == total:
            _save(run, model, opt, step, total, time.time() - t0, fp)
    _save(run, model, opt, step, total, time.time() - t0, fp)
    done, seconds = step - first, time.time() - t0 - elapsed
    if done:
        run.log(f"{done} steps in {seconds:.1f} s ({seconds / done:.2f} s/step incl. evaluation and saving)")
    return model, step, total, time.time() - t0


def _on(prep: TorchPreprocess, device: torch.device) -> TorchPreprocess:
    return prep if prep.device == device else TorchPreprocess(*prep.shape, prep.cfg, device)


def _save(run: Run, model, opt, step: int, total: int, elapsed: float, fp: str) -> None:
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "step": step,
        "total": total,
        "elapsed": elapsed,
        "history": json.dumps(run.history),
        "fingerprint": fp,
    }
    save_state(run.work / STATE_FILE, state)


# --------------------------------------------------------------------------------------------------
# shipped data and weights


def shipped_subsets(spec: dict) -> dict[str, dict[str, np.ndarray]]:
    """The shipped data: 2,000 test images (200 per class) and the 6,000-image training holdout."""
    seed = spec["train"]["seed"]
    test_x, test_y = load_split("test")
    rng = np.random.default_rng(seed + 1)
    per = spec["ship"]["eval_per_class"]
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(test_y == k), per, replace=False) for k in range(10)]))
    train_x, train_y = load_split("train")
    _, hold = split_train(len(train_x), spec["train"]["holdout"], seed)
    return {
        "eval_fashion_mnist_test2000.npz": {"images": test_x[idx], "labels": test_y[idx], "source_index": idx},
        "calibration_fashion_mnist_train6000.npz": {
            "images": train_x[hold],
            "labels": train_y[hold],
            "source_index": hold,
        },
    }


def write_assets(spec: dict, classes: dict, templates: dict) -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    for name, arrays in shipped_subsets(spec).items():
        np.savez_compressed(ASSETS / name, **arrays)
    (ASSETS / "classes.json").write_text(json.dumps(classes, indent=2))
    (ASSETS / "templates.json").write_text(json.dumps(templates, indent=2))
    print(f"wrote the shipped eval and calibration sets to {ASSETS}")


def check_assets(spec: dict) -> None:
    """The shipped subsets are what this recipe draws (else the holdout could overlap the training images)."""
    for name, arrays in shipped_subsets(spec).items():
        with np.load(ASSETS / name) as shipped:
            for key, a in arrays.items():
                if not np.array_equal(shipped[key], a):
                    raise SystemExit(f"{ASSETS / name}: {key} differs from the recipe's; run --assets-only first")


def ship(model, spec: dict, run: Run, elapsed: float, steps: int, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.float().cpu().half().save_pretrained(tmp, safe_serialization=True)
    PreprocessConfig(size=spec["vision_config"]["image_size"]).save(tmp / "preprocessor_config.json")
    log = {
        "recipe": "calibration/train_builtin.py",
        "epochs": run.epochs or spec["train"]["epochs"],
        "steps": steps,
        "train_images": len(run.data.train_x),
        "training_minutes": round(elapsed / 60, 1),
        "device": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "precision": run.precision,
        "preprocessing": "ovclip.preprocess_torch on the device (bit-identical to ovclip.preprocess)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "history": run.history,
    }
    (tmp / "training_log.json").write_text(json.dumps(log, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    print(f"shipped model to {out} after {elapsed / 60:.1f} min of training")


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets-only", action="store_true", help="only write the shipped eval/calibration sets")
    ap.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    ap.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cpu, cuda, cuda:N")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--stop-after", type=int, help="run this many steps, save the state and stop (resume later)")
    ap.add_argument("--save-every", type=int, default=50, help="save the state every N steps (default 50)")
    ap.add_argument("--work", type=Path, default=WORK, help="where the resumable state lives")
    ap.add_argument("--out", type=Path, default=ASSETS / "model", help="where the finished model is shipped")
    ap.add_argument("--restart", action="store_true", help="discard a saved state and start over")
    return ap.parse_args()


def main() -> None:
    args = _parse()
    spec, classes, templates = load_recipe()
    if args.assets_only:
        write_assets(spec, classes, templates)
        return
    check_assets(spec)
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device, cpu_flags())
    if args.restart:
        (args.work / STATE_FILE).unlink(missing_ok=True)
    hp = spec["train"]
    train_x, train_y = load_split("train")
    tr, hold = split_train(len(train_x), hp["holdout"], hp["seed"])
    data = make_data(spec, classes, templates, train_x[tr], train_y[tr], train_x[hold], train_y[hold], device)
    stop = {"flag": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.update(flag=True))
    run = Run(spec, data, device, precision, args.work, args.epochs, args.stop_after, args.save_every)
    run.should_stop = lambda: stop["flag"]
    print(f"training on {device} in {precision}; state in {args.work}")
    model, step, total, elapsed = train(run)
    if step >= total:
        ship(model, spec, run, elapsed, step, args.out)
    else:
        print(f"stopped at step {step}/{total}; run the same command again to continue")


if __name__ == "__main__":
    main()
