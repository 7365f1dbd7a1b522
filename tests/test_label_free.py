"""Calibration from any images (#12): flat folders, image lists and captions files as calibration sources, exit heads
distilled without labels, the label-free fidelity rule and its threshold search, the manifest's record of both, and
the errors on bad input. Mechanics on the tiny random CLIP (random weights: no accuracy is claimed here)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from ovclip.cli import main
from ovclip.data.builtin import CALIBRATION_FILE, load_npz
from ovclip.data.calibration_sets import CaptionedImages, calibration_texts, open_calibration
from ovclip.data.images import load_image
from ovclip.data.labeled import LabeledImages
from ovclip.data.unlabeled import UnlabeledImages
from ovclip.errors import OvclipError
from ovclip.exits.config import ExitBuildConfig, check_calibration_size, split_calibration
from ovclip.exits.distill import DistillTargets, distill_loss, select_distill_head, train_distill_head
from ovclip.exits.fidelity import fidelity_trace, for_fidelity_budget, for_min_fidelity, grid_sums
from ovclip.exits.heads import HeadTrainConfig, SSAHead, head_embeddings
from ovclip.exits.label_free import ridge_fit
from ovclip.policy.cascade import evaluate
from ovclip.preprocess import PreprocessConfig, preprocess
from ovclip.runtime import Deployment

N_IMAGES = 360  # >= min_images below; heads / fidelity models / thresholds = 180 / 60 / 120


def _fashion_pngs(folder: Path, n: int) -> list[Path]:
    images, _, _ = load_npz(CALIBRATION_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img_{i:04d}.png")
        Image.fromarray(images[i], mode="L").save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    """N_IMAGES Fashion-MNIST training images as PNG files in one folder, no labels."""
    root = tmp_path_factory.mktemp("flat")
    _fashion_pngs(root, N_IMAGES)
    return root


def _broken(path: Path) -> Path:
    path.write_bytes(b"not a png at all")
    return path


# --------------------------------------------------------------------------------------------------
# calibration sources


def test_calibration_sources_flat_list_captions_and_class_tree(flat, tmp_path):
    cfg = PreprocessConfig(size=64)
    files = sorted(flat.glob("*.png"))
    data = open_calibration(str(flat))
    assert isinstance(data, UnlabeledImages) and data.labels is None and len(data) == N_IMAGES
    want = np.stack([preprocess(load_image(files[i]), cfg) for i in (0, 7)])
    np.testing.assert_array_equal(data.pixels([0, 7], cfg), want)

    listing = tmp_path / "list.txt"
    listing.write_text("# three images\n" + "\n".join(str(p) for p in files[:3]) + "\n")
    data = open_calibration(str(listing))
    assert isinstance(data, UnlabeledImages) and len(data) == 3
    np.testing.assert_array_equal(data.pixels([2], cfg)[0], preprocess(load_image(files[2]), cfg))

    jsonl = tmp_path / "caps.jsonl"
    rows = [(files[0], "a shoe"), (files[1], "a shirt"), (files[0], "a sneaker, side view")]
    jsonl.write_text("\n".join(json.dumps({"image": str(p), "caption": c}) for p, c in rows) + "\n")
    data = open_calibration(str(jsonl))
    assert isinstance(data, CaptionedImages) and data.labels is None and len(data) == 2
    assert data.caption_lists() == [["a shoe", "a sneaker, side view"], ["a shirt"]]
    assert calibration_texts(data) == ["a shoe", "a shirt", "a sneaker, side view"]
    np.testing.assert_array_equal(data.pixels([1], cfg)[0], preprocess(load_image(files[1]), cfg))
    assert data.subset([1]).caption_lists() == [["a shirt"]]

    tree = tmp_path / "tree"
    for cls, i in (("shoe", 0), ("shirt", 1)):
        (tree / cls).mkdir(parents=True)
        Image.open(files[i]).save(tree / cls / f"{i}.png")
    labelled = open_calibration(str(tree))
    assert isinstance(labelled, LabeledImages) and labelled.class_names == ["shirt", "shoe"]
    unlabeled = open_calibration(str(tree), labels=False)
    assert isinstance(unlabeled, UnlabeledImages) and len(unlabeled) == 2
    with pytest.raises(OvclipError, match="no labels or captions; quantize the text tower as fp16"):
        calibration_texts(open_calibration(str(flat)))


@pytest.mark.parametrize("kind", ["flat", "list", "jsonl"])
def test_strict_stops_on_the_first_unreadable_image(tmp_path, kind):
    files = _fashion_pngs(tmp_path / "imgs", 3)
    bad = _broken(tmp_path / "imgs" / "img_0001b.png")
    spec = tmp_path / "imgs"
    if kind == "list":
        spec = tmp_path / "l.txt"
        spec.write_text("\n".join(str(p) for p in [files[0], bad, files[1]]))
    elif kind == "jsonl":
        spec = tmp_path / "c.jsonl"
        spec.write_text("\n".join(json.dumps({"image": str(p), "caption": "x"}) for p in [files[0], bad, files[2]]))
    with pytest.raises(OvclipError, match=r"img_0001b\.png.*strict"):
        open_calibration(str(spec), strict=True)
    data = open_calibration(str(spec))  # without strict: skipped and recorded
    assert [Path(p).name for p, _ in data.skipped] == ["img_0001b.png"]


def test_too_few_readable_images_says_how_many_were_found_and_needed(tmp_path):
    _fashion_pngs(tmp_path / "few", 5)
    _broken(tmp_path / "few" / "zz_bad.png")
    data = open_calibration(str(tmp_path / "few"))
    with pytest.raises(OvclipError) as e:
        check_calibration_size(data, ExitBuildConfig())
    msg = str(e.value)
    assert "needs at least 600 readable calibration images" in msg
    assert "has 5, 1 more unreadable and skipped (first: " in msg and "zz_bad.png" in msg
    assert e.value.params == ("calibration",)
    # the CLI, with the (trained) built-in model, says it before NNCF runs, with the flag's name
    out = tmp_path / "int8"
    r = CliRunner().invoke(main, ["quantize", "--calibration", str(tmp_path / "few"), "--out", str(out)])
    assert r.exit_code != 0 and not out.exists()
    assert "needs at least 600 readable calibration images" in r.output and "Add images to --calibration" in r.output


def test_quantize_no_exits_on_a_flat_folder(flat, tmp_path, tiny_clip):
    out = tmp_path / "int8"
    args = ["quantize", "--model", str(tiny_clip.folder), "--calibration", str(flat), "--out", str(out)]
    r = CliRunner().invoke(main, [*args, "--no-exits", "--subset-size", "8", "--smooth-quant", "off"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantization"]["calibration"]["labelled"] is False
    assert m["quantization"]["calibration"]["images"] == 8 and "exit_policy" not in m
    r = CliRunner().invoke(main, [*args, "--overwrite", "--no-exits", "--min-fidelity", "0.9"])
    assert r.exit_code != 0 and "--min-fidelity" in r.output and "drop --no-exits" in r.output


# --------------------------------------------------------------------------------------------------
# distillation heads


def _synthetic(n=400, d=24, e=16, seed=0):
    g = np.random.default_rng(seed)
    pooled = g.standard_normal((n, d)).astype(np.float32)
    target = np.tanh(pooled @ g.standard_normal((d, e))) + 0.1 * g.standard_normal((n, e))
    return pooled, target.astype(np.float32)


def _cosine_loss(head: SSAHead, pooled: np.ndarray, target: np.ndarray) -> float:
    """1 - mean cosine, computed here in numpy from the head's raw outputs."""
    with torch.no_grad():
        out = head(torch.from_numpy(pooled)).numpy()
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    t = target / np.linalg.norm(target, axis=1, keepdims=True)
    return float(1 - np.mean(np.sum(out * t, axis=1)))


def test_distillation_reduces_the_cosine_loss_on_held_out_rows():
    pooled, target = _synthetic()
    train, val = np.arange(300), np.arange(300, 400)
    torch.manual_seed(0)
    untrained = SSAHead(pooled.shape[1], target.shape[1]).eval()  # what train_distill_head starts from (same seed)
    cfg = HeadTrainConfig(epochs=60, batch_size=64, lr=3e-3)
    head = train_distill_head(pooled[train], DistillTargets(target[train]), cfg)
    before, after = _cosine_loss(untrained, pooled[val], target[val]), _cosine_loss(head, pooled[val], target[val])
    assert after < 0.3 * before, (before, after)
    picked, epochs, val_cos = select_distill_head(
        pooled, DistillTargets(target), train, val, HeadTrainConfig(epoch_candidates=(1, 60), batch_size=64, lr=3e-3)
    )
    assert epochs == 60 and val_cos[60] > val_cos[1]
    assert val_cos[60] == pytest.approx(1 - _cosine_loss(picked, pooled[val], target[val]), abs=1e-5)


def test_distill_loss_with_captions_is_cosine_plus_clip_contrastive_loss():
    g = np.random.default_rng(1)
    emb, tgt, cap = (F.normalize(torch.from_numpy(g.standard_normal((5, 8)).astype(np.float32)), dim=-1) for _ in "abc")
    t = DistillTargets(tgt.numpy(), cap.numpy(), logit_scale=10.0, caption_weight=0.5)
    got = float(distill_loss(emb, tgt, cap, t))
    e, c = emb.double().numpy(), cap.double().numpy()
    logits = 10.0 * e @ c.T

    def xent(z):  # mean over rows of -log softmax(z)[i, i]
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - np.diag(z)))

    want = 1 - np.mean(np.sum(e * tgt.double().numpy(), 1)) + 0.5 * 0.5 * (xent(logits) + xent(logits.T))
    assert got == pytest.approx(want, abs=1e-5)
    # captions pull each image's head embedding towards its own caption: training lowers the contrastive term
    pooled, target = _synthetic(n=256)
    caps = np.tanh(pooled @ np.random.default_rng(3).standard_normal((pooled.shape[1], target.shape[1])))
    targets = DistillTargets(target, caps.astype(np.float32), logit_scale=20.0)
    head = train_distill_head(pooled, targets, HeadTrainConfig(epochs=40, batch_size=64, lr=3e-3))
    e = head_embeddings(head, pooled)
    c = caps / np.linalg.norm(caps, axis=1, keepdims=True)
    assert np.mean(np.argmax(e @ c.T, axis=1) == np.arange(len(e))) > 0.5  # caption retrieval far above 1/256


# --------------------------------------------------------------------------------------------------
# the fidelity threshold search


def _fid_trace(n=300, seed=0):
    g = np.random.default_rng(seed)
    exits = [2, 3]
    cos = {2: np.clip(0.85 + 0.1 * g.standard_normal(n), -1, 1), 3: np.clip(0.93 + 0.05 * g.standard_normal(n), -1, 1)}
    score = {L: cos[L] + 0.05 * g.standard_normal(n) for L in exits}  # an informative, noisy predictor
    return fidelity_trace(exits, score, cos, {2: 50.0, 3: 75.0, 4: 100.0}, 4)


def _brute(tr, grids):
    """Every threshold combination by hand: (thresholds, mean cosine, 95% lower bound, mean FLOPs)."""
    out = []
    for combo in itertools.product(*(grids[L] for L in tr.exits)):
        t = dict(zip(tr.exits, combo, strict=True))
        fid, fl, per = evaluate(tr, t)
        lcb = per.mean() - 1.6448536269514722 * per.std(ddof=1) / np.sqrt(len(per))
        out.append((t, fid, lcb, fl))
    return out


@pytest.mark.parametrize("bound", [0.9, 0.95, 0.97, 0.99])
def test_min_fidelity_search_is_the_cheapest_feasible_grid_point(bound):
    tr = _fid_trace()
    grids = {L: [None, *np.quantile(tr.score[L], np.linspace(0, 1, 9)).tolist()] for L in tr.exits}
    t, fid, fl = for_min_fidelity(tr, grids, bound)
    brute = _brute(tr, grids)
    feasible = [b for b in brute if b[2] >= bound or all(v is None for v in b[0].values())]
    assert fl == pytest.approx(min(b[3] for b in feasible))
    mine = next(b for b in brute if b[0] == t)
    assert mine[2] >= bound or all(v is None for v in t.values())
    assert fid == pytest.approx(mine[1])
    total, total_sq, flops = grid_sums(tr, grids)  # the vectorised sums equal the one-by-one cascade
    cells = itertools.product(*(range(len(grids[L])) for L in tr.exits))
    for (_, fid_b, _, fl_b), idx in zip(brute, cells, strict=True):
        assert total[idx] / len(tr) == pytest.approx(fid_b) and flops[idx] / len(tr) == pytest.approx(fl_b)


def test_fidelity_budget_search_is_the_most_faithful_within_the_budget():
    tr = _fid_trace(seed=4)
    grids = {L: [None, *np.quantile(tr.score[L], np.linspace(0, 1, 9)).tolist()] for L in tr.exits}
    t, fid, fl = for_fidelity_budget(tr, grids, 0.8)
    brute = [b for b in _brute(tr, grids) if b[3] <= 80.0 + 1e-9]
    assert fl <= 80.0 + 1e-9 and fid == pytest.approx(max(b[1] for b in brute))


def test_ridge_fit_matches_the_closed_form_and_chooses_a_penalty():
    g = np.random.default_rng(0)
    x = g.standard_normal((200, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]) + 0.3 + 0.01 * g.standard_normal(200)
    w, b, lam, r2 = ridge_fit(x, y, lambdas=(1e-4, 10.0))
    assert lam == 1e-4 and r2 > 0.99
    xc = x - x.mean(0)
    want = np.linalg.solve(xc.T @ xc + 1e-4 * 200 * np.eye(5), xc.T @ (y - y.mean()))
    np.testing.assert_allclose(w, want, rtol=1e-10)
    assert b == pytest.approx(y.mean() - x.mean(0) @ want)


# --------------------------------------------------------------------------------------------------
# the label-free build, end to end on the tiny model


@pytest.fixture(scope="module")
def label_free_int8(flat, tiny_ckpt, tmp_path_factory):
    from ovclip.quantize import QuantizationConfig
    from ovclip.quantize.pipeline import quantize_deployment

    out = tmp_path_factory.mktemp("lf") / "int8"
    cfg = ExitBuildConfig(min_fidelity=0.8, min_images=300, head=HeadTrainConfig(epoch_candidates=(20,), lr=3e-3))
    data = open_calibration(str(flat))
    manifest = quantize_deployment(
        tiny_ckpt, out, data, QuantizationConfig(subset_size=16, smooth_quant_alpha=None), exits="1,2,3", early_exit=cfg
    )
    return out, manifest, data, cfg


def test_label_free_build_records_rule_data_and_bound(label_free_int8, flat):
    _, m, data, _ = label_free_int8
    policy, emb_policy = m["exit_policy"], m["exit_policy_embedding"]
    assert policy["rule"] == "fidelity" and emb_policy == policy and policy["exits"] == [1, 2, 3]
    assert set(policy["predictors"]) == {"1", "2", "3"} and policy["predictors"]["1"]["agreement_weight"] == 0.0
    info = policy["info"]
    assert info["calibration_data"] == {
        "source": data.source,
        "labelled": False,
        "captions": False,
        "images": N_IMAGES,
        "skipped": 0,
    }
    assert str(flat) in info["calibration_data"]["source"]
    assert info["objective"]["min_fidelity"] == 0.8 and "lower confidence bound" in info["objective"]["statistic"]
    assert info["splits"] == {"heads": 180, "fidelity_models": 60, "thresholds": 120}
    assert info["calibration_fidelity_lower_bound_95"] >= 0.8
    assert info["head_training"]["loss"] == "distillation"
    assert m["quantization"]["calibration"]["labelled"] is False


def test_label_free_bound_holds_on_the_calibration_split_through_the_runtime(label_free_int8):
    """Re-measure the policy on its threshold split with the runtime: the mean cosine of what each image leaves
    with to the folder's full-depth embedding, and its 95% lower bound, as the build recorded them."""
    out, m, data, cfg = label_free_int8
    info = m["exit_policy"]["info"]
    _, _, threshold_split = split_calibration(len(data), cfg)
    dep = Deployment(out)
    px = data.pixels(np.sort(threshold_split), dep.preprocess_config)
    ee = dep.run_vision(px)  # no class embeddings: the label-free policy
    full = dep.encode_images(px)
    cos = np.sum(ee.embeddings * full, axis=1)
    assert (ee.exit_layer < 4).mean() > 0.2  # the bound is met with images leaving early, not trivially
    cos[ee.exit_layer == 4] = 1.0  # full depth: the same embedding (as the statistic counts it)
    lcb = cos.mean() - 1.6448536269514722 * cos.std(ddof=1) / np.sqrt(len(cos))
    assert cos.mean() == pytest.approx(info["calibration_fidelity"], abs=0.01)
    assert lcb >= 0.8 - 0.01
    shares = {int(L): s for L, s in info["calibration_exit_shares"].items()}
    for L, s in shares.items():
        assert np.mean(ee.exit_layer == L) == pytest.approx(s, abs=0.05)


def test_caption_embeddings_are_each_images_mean_caption_embedding(tmp_path, tiny_clip, tiny_ckpt):
    """The contrastive targets: per image, the normalised mean of its captions' normalised text embeddings,
    from the FP32 text IR — the same as transformers in torch."""
    from ovclip.exits.label_free_build import caption_embeddings
    from ovclip.export.exporter import convert_text

    files = _fashion_pngs(tmp_path, 2)
    jsonl = tmp_path / "caps.jsonl"
    rows = [(files[1], "a red shoe"), (files[0], "a shirt"), (files[1], "a sneaker {0}, side view")]
    jsonl.write_text("\n".join(json.dumps({"image": p.name, "caption": c}) for p, c in rows))
    data = open_calibration(str(jsonl))
    ours = caption_embeddings(convert_text(tiny_ckpt.model), tiny_ckpt.tokenizer, data)
    texts = ["a red shoe", "a shirt", "a sneaker {0}, side view"]
    with torch.no_grad():
        out = tiny_clip.model.get_text_features(input_ids=torch.from_numpy(tiny_ckpt.tokenizer(texts)))
        t = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1).numpy()
    want = np.stack([t[0] + t[2], t[1]])  # image rows in order of first mention: img_0001 (two captions), img_0000
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, want, atol=1e-5)
    assert caption_embeddings(None, None, open_calibration(str(tmp_path))) is None
