"""`ovclip bench` timed in rotating rounds, the MLPerf scenarios, the deployed flag, unlabeled images (embedding
fidelity), retrieval with early exit, and the model cache.

The mechanics run on the shared tiny CLIP (conftest; random weights, exported from a Hugging Face folder) with
random exit heads and a hand-set exit policy; every figure a record carries is recomputed here from its parts:
the per-round timings, brute-force numpy (cosines, nearest neighbours over the full similarity matrix),
scikit-learn's `average_precision_score`, and runs of the deployment stage by stage. Images are real
Fashion-MNIST test images written as PNG files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import EMBED, IMAGE, PATCH, WIDTH
from PIL import Image
from sklearn.metrics import average_precision_score

from ovclip.bench.fidelity import nearest_neighbours
from ovclip.bench.metrics import average_precision, class_prompt_retrieval, precision_at_k
from ovclip.bench.report import GENERIC_TEMPLATES
from ovclip.bench.rounds import ratio_within_rounds, rotating_rounds, summary
from ovclip.bench.variants import deployed_config, is_deployed, plugin_default_precision, variants
from ovclip.cli import main
from ovclip.errors import OvclipError
from ovclip.folder import read_manifest, write_manifest
from ovclip.policy.rules import ExitPolicy
from ovclip.runtime import Deployment
from ovclip.runtime.deployment import trace_vision
from ovclip.runtime.device import cache_dir_for, compile_config

FAST = ["--time", "0.3", "--precision", "f32"]
EXITS = [1, 2, 3]
CLASSES = [0, 1, 7, 9]  # T-shirt/top, Trouser, Sneaker, Ankle boot
PER_CLASS = 6


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def records_of(result, path: Path) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


# --- data: real Fashion-MNIST test images as files -----------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist():
    from ovclip.data.datasets import fashion_mnist

    return fashion_mnist("test")


@pytest.fixture(scope="module")
def labelled_folder(fmnist, tmp_path_factory) -> Path:
    """One subfolder per class (4 classes x 6 images), named by the class's prompt name."""
    root = tmp_path_factory.mktemp("fmnist-labelled")
    for c in CLASSES:
        idx = np.flatnonzero(fmnist.labels == c)[:PER_CLASS]
        (root / fmnist.prompt_names[c]).mkdir()
        for i in idx:
            Image.fromarray(fmnist.gray[i]).save(root / fmnist.prompt_names[c] / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def flat_folder(fmnist, tmp_path_factory) -> Path:
    """30 images in one folder, no labels."""
    root = tmp_path_factory.mktemp("fmnist-flat")
    for i in range(30):
        Image.fromarray(fmnist.gray[100 + i]).save(root / f"img_{i:02d}.png")
    return root


def pixels_of(files: list[Path], dep: Deployment) -> np.ndarray:
    return dep.preprocess([Image.open(f) for f in files])


# --- a folder with exits: the tiny FP32 tower, random heads, hand-set policies ---------------------------------


@pytest.fixture(scope="module")
def ee_folder(fp32_folder, flat_folder, tmp_path_factory) -> Path:
    """The conftest FP32 folder (stages end at blocks 1, 2, 3, 4) with random SSA heads at 1, 2, 3; the class rule
    (confidence) lets every image out at exit 2; the label-free rule (agreement) lets out at exit 2 the images
    whose head embedding agrees with exit 1's above the median of the flat folder's, and the rest at exit 3."""
    from ovclip.exits.heads import SSAHead, export_head

    folder = tmp_path_factory.mktemp("ee") / "fp32-ee"
    shutil.copytree(fp32_folder, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("files")
    tokens = (IMAGE // PATCH) ** 2 + 1
    import openvino as ov

    for L in EXITS:
        torch.manual_seed(100 + L)
        ov.save_model(export_head(SSAHead(WIDTH, EMBED).eval(), tokens, WIDTH), folder / f"exit_head_{L}.xml")
    heads = {L: f"exit_head_{L}.xml" for L in EXITS}
    data["exit_policy"] = ExitPolicy("confidence", EXITS, heads, {1: None, 2: 0.0, 3: None}).to_dict()
    write_manifest(folder, data)
    dep = Deployment(folder, runtime="stages")
    probe = ExitPolicy("agreement", EXITS, heads, {1: None, 2: None, 3: None})
    t = trace_vision(dep, pixels_of(sorted(flat_folder.iterdir()), dep), probe)
    agree = np.sum(t["heads"][2][0] * t["heads"][1][0], axis=1)
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("files")
    data["exit_policy_embedding"] = probe.with_thresholds({1: None, 2: float(np.median(agree)), 3: -1.0}).to_dict()
    write_manifest(folder, data)
    return folder


# --- rounds -------------------------------------------------------------------------------------------------


def test_rotating_rounds_rotate_and_summarise():
    calls = []
    runs = {k: (lambda k=k: calls.append(k) or len(calls)) for k in "abc"}
    got = rotating_rounds(runs, 4)
    assert calls == list("abcbcacababc")
    assert got == {"a": [1, 6, 8, 10], "b": [2, 4, 9, 11], "c": [3, 5, 7, 12]}
    v = [3.0, 1.0, 4.0, 1.5, 9.0]
    s = summary(v)
    assert (s["median"], s["min"], s["max"], s["runs"]) == (3.0, 1.0, 9.0, v)
    assert (s["q1"], s["q3"]) == (float(np.percentile(v, 25)), float(np.percentile(v, 75)))
    r = ratio_within_rounds([2.0, 3.0, 8.0], [1.0, 2.0, 2.0])
    assert r["runs"] == [2.0, 1.5, 4.0] and r["median"] == 2.0
    with pytest.raises(Exception, match="rounds=0"):
        rotating_rounds(runs, 0)


def test_bench_records_are_timed_in_rounds(ee_folder, labelled_folder, tmp_path):
    out = tmp_path / "r.json"
    recs = records_of(run("bench", ee_folder, "--data", labelled_folder, "--rounds", "3", *FAST, "--json", out), out)
    assert [r["variant"] for r in recs] == ["fp32", "fp32-ee"]
    full, ee = recs
    for r in recs:  # one offline batch for the folder, measured first (24 images: a batch of 16 or 24 holds them)
        assert len(r["rounds"]) == 3 and r["scenario"] == "offline" and r["batch"] == r["batch_choice"]["batch"]
        tp = [x["throughput_fps"] for x in r["rounds"]]
        assert r["throughput_fps"] == pytest.approx(float(np.median(tp)))
        assert (r["throughput_spread"]["min"], r["throughput_spread"]["max"]) == (min(tp), max(tp))
        assert r["latency_ms"]["p90"] == pytest.approx(float(np.median([x["latency_ms"]["p90"] for x in r["rounds"]])))
        assert r["iterations"] == sum(x["iterations"] for x in r["rounds"])
        assert r["compile_s"] > 0 and r["first_inference_ms"] > 0
    per_round = [a["throughput_fps"] / b["throughput_fps"] for a, b in zip(ee["rounds"], full["rounds"], strict=True)]
    c = ee["vs_full_depth"]
    assert c["variant"] == "fp32" and c["throughput_ratio"]["runs"] == pytest.approx(per_round)
    assert c["throughput_ratio"]["median"] == pytest.approx(float(np.median(per_round)))
    # the class rule lets every image out at exit 2: the saving on the timed images is exit 2's
    assert ee["exit_histogram"] == {"1": 0, "2": len(CLASSES) * PER_CLASS, "3": 0, "4": 0}
    assert c["flops_saving_timed"] == pytest.approx(ee["flops_saving"])
    assert (full["deployed"], ee["deployed"]) == (False, True)  # Deployment(folder) runs exits by default
    assert "vs_full_depth" not in full


def test_deployed_configuration(ee_folder, fp32_folder, tmp_path):
    m = read_manifest(fp32_folder)
    assert [(v.name, v.early_exit) for v in variants(m, "CPU", "f32")] == [("fp32", False)]
    assert deployed_config(m, "CPU") == ("f32", False) and deployed_config(m, "GPU") == (None, False)
    (v,) = variants(m, "CPU", "f32")
    assert is_deployed(m, "CPU", v, "f32") and not is_deployed(m, "CPU", v, "bf16")
    # a folder that records its choice: exits off, the plugin's default precision
    folder = tmp_path / "chosen"
    shutil.copytree(ee_folder, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("files")
    data["deployed"] = {"inference_precision": None, "early_exit": False}
    write_manifest(folder, data)
    m = read_manifest(folder)
    full, ee = variants(m, "CPU", "f32")
    default = plugin_default_precision("CPU")
    assert is_deployed(m, "CPU", full, default) and not is_deployed(m, "CPU", ee, default)
    assert not is_deployed(m, "CPU", full, "bf16" if default == "f32" else "f32")
    # what Deployment(folder) then runs
    dep = Deployment(folder)
    assert dep.executed_precision() == default and dep.deployed_early_exit is False


# --- scenarios ----------------------------------------------------------------------------------------------


def test_single_stream_reports_latency_and_its_saving(ee_folder, flat_folder, tmp_path):
    out = tmp_path / "r.json"
    args = ["bench", ee_folder, "--data", flat_folder, "--scenario", "single-stream", "--rounds", "2", *FAST]
    full, ee = records_of(run(*args, "--json", out), out)
    for r in (full, ee):
        assert (r["scenario"], r["batch"], r["nireq"], r["hint"]) == ("single-stream", 1, 1, "latency")
        assert r["runtime"] == "graph"  # one image per query: If branches, an image that exits skips the rest
        assert r["images_timed"] == r["iterations"]  # one image per query
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
    saving = [
        1 - a["latency_ms"]["mean"] / b["latency_ms"]["mean"] for a, b in zip(ee["rounds"], full["rounds"], strict=True)
    ]
    c = ee["vs_full_depth"]
    assert c["latency_saving"]["runs"] == pytest.approx(saving)
    assert c["latency_saving_over_flops_saving"] == pytest.approx(float(np.median(saving)) / c["flops_saving_timed"])
    # no labels: the label-free rule ran, half the images (the median split) leave at exit 2, the rest at 3
    assert ee["exit_rule"] == "agreement" and ee["exit_histogram"] == {"1": 0, "2": 15, "3": 15, "4": 0}
    assert ee["flops_measured_on"] == "the data set (30 images)"


def test_multi_stream_sends_eight_images_per_query(ee_folder, flat_folder, tmp_path):
    out = tmp_path / "r.json"
    args = ["bench", ee_folder, "--data", flat_folder, "--scenario", "multi-stream", "--rounds", "1", *FAST]
    full, ee = records_of(run(*args, "--no-accuracy", "--json", out), out)
    for r in (full, ee):
        assert (r["batch"], r["nireq"]) == (8, 1) and r["images_timed"] == 8 * r["iterations"]
    # no pass over the data: exits and FLOPs are those of the timed images (3 queries of 8 of the 30)
    dep = Deployment(ee_folder, runtime="stages")
    want = dep.run_vision(pixels_of(sorted(flat_folder.iterdir())[:24], dep), early_exit=True).exit_layer
    assert ee["exit_histogram"] == {str(L): int(np.sum(want == L)) for L in [1, 2, 3, 4]}
    assert ee["flops_measured_on"] == "the 24 timed images" and ee["flops_saving"] == ee["flops_saving_timed"] > 0
    assert ee["top1"] is None and "not measured" in ee["accuracy_note"]
    result = run("bench", ee_folder, "--scenario", "single-stream", "--batch", "4", *FAST)
    assert result.exit_code == 2 and "--batch 4: the single-stream scenario sends 1 image(s)" in result.output


# --- unlabeled images: fidelity against FP32 ----------------------------------------------------------------


def brute_fidelity(emb: np.ndarray, ref: np.ndarray, k: int = 10) -> dict:
    cos = np.sum(emb * ref, axis=1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)

    def knn(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row)[:k].tolist()) for row in s]

    overlap = np.mean([len(a & b) / k for a, b in zip(knn(emb), knn(ref), strict=True)])
    return {"mean_cosine": cos.mean(), "min_cosine": cos.min(), "top10_overlap": overlap}


def test_unlabeled_flat_folder_reports_fidelity(fp32_folder, ee_folder, flat_folder, tmp_path):
    out = tmp_path / "r.json"
    result = run("bench", fp32_folder, ee_folder, "--data", flat_folder, "--rounds", "1", *FAST, "--json", out)
    recs = records_of(result, out)
    assert [(Path(r["model"]).name, r["variant"]) for r in recs] == [
        ("fp32", "fp32"),
        ("fp32-ee", "fp32"),
        ("fp32-ee", "fp32-ee"),
    ]
    files = sorted(flat_folder.iterdir())
    ref_dep, ee_dep = Deployment(fp32_folder, runtime="stages"), Deployment(ee_folder, runtime="stages")
    ref = ref_dep.run_vision(pixels_of(files, ref_dep), early_exit=False).embeddings
    ee_out = ee_dep.run_vision(pixels_of(files, ee_dep), early_exit=True)  # no class embeddings: label-free rule
    for r, emb in zip(recs, [ref, ref, ee_out.embeddings], strict=True):
        assert r["top1"] is None and r["top5"] is None and "unlabeled" in r["accuracy_note"]
        assert r["n_images"] == 30 and r["throughput_fps"] > 0
        f, want = r["fidelity"], brute_fidelity(emb, ref)
        for key in want:
            assert f[key] == pytest.approx(want[key], abs=2e-6), key
        assert str(fp32_folder) in f["reference"]
    assert recs[2]["fidelity"]["mean_cosine"] < 0.999  # exits changed the embeddings; the check above had work
    assert recs[2]["exit_histogram"] == {str(L): int(np.sum(ee_out.exit_layer == L)) for L in [1, 2, 3, 4]}
    assert "no zero-shot accuracy" in result.output


def test_image_list_and_unlabeled_tree(fp32_folder, labelled_folder, tmp_path):
    files = sorted(labelled_folder.rglob("*.png"))
    listing = tmp_path / "images.txt"
    listing.write_text("# two images\n" + "\n".join(str(f) for f in files[:2]) + "\n\n")
    out = tmp_path / "r.json"
    (r,) = records_of(run("bench", fp32_folder, "--data", listing, "--rounds", "1", *FAST, "--json", out), out)
    assert r["n_images"] == 2 and r["top1"] is None and r["fidelity"]["mean_cosine"] == pytest.approx(1.0)
    # a class tree read without its labels: every image, no accuracy
    result = run("bench", fp32_folder, "--data", labelled_folder, "--unlabeled", "--rounds", "1", *FAST, "--json", out)
    (r,) = records_of(result, out)
    assert r["n_images"] == len(files) and r["top1"] is None
    listing.write_text("notes.md\n")
    result = run("bench", fp32_folder, "--data", listing, *FAST)
    assert result.exit_code == 2 and "line 1: 'notes.md' is not an image file name" in result.output


# --- retrieval ----------------------------------------------------------------------------------------------


def test_retrieval_metrics_against_sklearn_and_hand_counts():
    rng = np.random.default_rng(0)
    for ties in (False, True):
        for _ in range(20):
            scores = rng.standard_normal(60)
            if ties:
                scores = np.round(scores, 1)  # many tied scores: scikit-learn steps over each tie at once
            relevant = rng.random(60) < 0.3
            assert average_precision(scores, relevant) == pytest.approx(average_precision_score(relevant, scores))
    # by hand: ranking r, n, r, n, r -> precision at the hits 1/1, 2/3, 3/5
    scores, relevant = np.array([5.0, 4, 3, 2, 1]), np.array([1, 0, 1, 0, 1], bool)
    assert average_precision(scores, relevant) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert precision_at_k(scores, relevant, 2) == 0.5 and precision_at_k(scores, relevant, 3) == pytest.approx(2 / 3)
    emb = rng.standard_normal((40, 8))
    cls = rng.standard_normal((3, 8))
    labels = rng.integers(0, 3, 40)
    got = class_prompt_retrieval(emb, cls, labels, ks=(5,))
    sims = cls @ emb.T
    assert got["mAP"] == pytest.approx(np.mean([average_precision_score(labels == c, sims[c]) for c in range(3)]))
    top5 = [np.mean(labels[np.argsort(-sims[c])[:5]] == c) for c in range(3)]
    assert got["P@5"] == pytest.approx(np.mean(top5)) and got["classes"] == 3


def test_bench_retrieval_full_depth_and_early_exit(ee_folder, labelled_folder, fmnist, tmp_path):
    files = sorted(labelled_folder.rglob("*.png"))
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        "".join(json.dumps({"image": str(f), "caption": f"a photo of a {f.parent.name}"}) + "\n" for f in files[::3])
    )
    out = tmp_path / "r.json"
    args = ["bench", ee_folder, "--data", labelled_folder, "--captions", captions, "--rounds", "1", *FAST]
    full, ee = records_of(run(*args, "--json", out), out)
    dep = Deployment(ee_folder, runtime="stages")
    names = sorted(p.name for p in labelled_folder.iterdir())
    cls = dep.class_embeddings(names, GENERIC_TEMPLATES)
    labels = np.array([names.index(f.parent.name) for f in files])
    px = pixels_of(files, dep)
    for rec, early in ((full, False), (ee, True)):
        out_ = dep.run_vision(px, early_exit=early)  # without class embeddings: the label-free rule
        ret = rec["retrieval"]
        assert ret["exit_rule"] == ("agreement" if early else None)
        sims = cls @ out_.embeddings.T
        want_map = np.mean([average_precision_score(labels == c, sims[c]) for c in range(len(names))])
        assert ret["class_prompts"]["mAP"] == pytest.approx(want_map, abs=1e-6)
        p10 = np.mean([np.mean(labels[np.argsort(-sims[c], kind="stable")[:10]] == c) for c in range(len(names))])
        assert ret["class_prompts"]["P@10"] == pytest.approx(p10)
        nn = nearest_neighbours(out_.embeddings, 10)
        assert ret["same_class_P@10"] == pytest.approx(np.mean(labels[nn] == labels[:, None]))
        cap_files = files[::3]
        text = dep.encode_text([f"a photo of a {f.parent.name}" for f in cap_files])
        img = dep.run_vision(pixels_of(cap_files, dep), early_exit=early).embeddings
        s = text @ img.T
        rank = (s > np.diag(s)[:, None]).sum(1)
        assert ret["captions"]["R@1"] == pytest.approx(np.mean(rank < 1))
        assert ret["captions"]["R@5"] == pytest.approx(np.mean(rank < 5))
    # the bench's own early-exit record ran the class rule; retrieval ran the label-free rule
    assert ee["exit_rule"] == "confidence" and ee["retrieval"]["flops_saving"] > 0
    assert ee["retrieval"]["fidelity"]["exit_rule"] == "agreement"


# --- the model cache ----------------------------------------------------------------------------------------


def test_model_cache_dir(fp32_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("OVCLIP_CACHE_DIR", str(tmp_path / "default-cache"))
    assert "CACHE_DIR" not in compile_config("CPU", cache_dir=None)
    assert compile_config("CPU")["CACHE_DIR"] == str(tmp_path / "default-cache")  # cached by default: it pays
    assert cache_dir_for("GPU") == tmp_path / "default-cache" and cache_dir_for("AUTO:NPU,CPU") is not None
    assert compile_config("GPU.1")["CACHE_DIR"] == str(tmp_path / "default-cache")
    assert "CACHE_DIR" not in compile_config("GPU", cache_dir=None)
    monkeypatch.setenv("OVCLIP_CACHE_DIR", "off")
    assert cache_dir_for("GPU") is None and "CACHE_DIR" not in compile_config("NPU")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OVCLIP_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    assert "CACHE_DIR" not in compile_config("GPU")  # the default cache is skipped, the model still loads
    with pytest.raises(OvclipError, match="a-file/cache cannot be created"):
        compile_config("CPU", cache_dir=blocker / "cache")  # asked for by name: an error
    cache = tmp_path / "mine"
    dep = Deployment(fp32_folder, cache_dir=cache)
    dep.compile_vision()
    assert any(p.is_file() for p in cache.rglob("*")), "compiling wrote nothing into the cache folder"


def test_bench_startup_cold_and_warm_cache(fp32_folder, tmp_path):
    out = tmp_path / "r.json"
    args = ["bench", fp32_folder, "--no-accuracy", "--startup", "--rounds", "1", "--no-cache", *FAST]
    (r,) = records_of(run(*args, "--json", out), out)
    assert r["model_cache"] is None  # --no-cache: the timed deployment compiled without it
    s = r["startup"]
    assert s["cache_files"] > 0
    for mode in ("off", "cold", "warm"):
        assert s[mode]["compile_s"] > 0 and s[mode]["first_inference_ms"] > 0 and s[mode]["runtime"] == "graph"
    assert s["warm_over_off_compile"] == pytest.approx(s["warm"]["compile_s"] / s["off"]["compile_s"])


def test_folder_with_only_a_label_free_rule_exits_on_labelled_data(ee_folder, labelled_folder, tmp_path):
    """A folder calibrated without labels has no class rule: with labels given, its early-exit record still runs
    its label-free rule (and scores top-1 with the class embeddings)."""
    folder = tmp_path / "label-free-only"
    shutil.copytree(ee_folder, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("files")
    data.pop("exit_policy")
    write_manifest(folder, data)
    out = tmp_path / "r.json"
    full, ee = records_of(run("bench", folder, "--data", labelled_folder, "--rounds", "1", *FAST, "--json", out), out)
    dep = Deployment(folder, runtime="stages")
    files = sorted(labelled_folder.rglob("*.png"))
    want = dep.run_vision(pixels_of(files, dep), early_exit=True)
    assert ee["exit_rule"] == "agreement" and ee["top1"] is not None and ee["deployed"]
    assert ee["exit_histogram"] == {str(L): int(np.sum(want.exit_layer == L)) for L in [1, 2, 3, 4]}
    assert ee["retrieval"]["exit_rule"] == "agreement" and "rescue" in ee


def test_pareto_on_data_for_a_folder_that_deploys_confidence(ee_folder, labelled_folder, tmp_path):
    """A folder whose deployed rule is not the gate (what `--exit-rule auto` mostly writes) carries no gates: bench's
    Pareto pass measures the confidence baseline alone, as a hand cascade over the traced heads gives it."""
    from ovclip.bench.passes import pareto_on_data
    from ovclip.data.datasets import open_dataset
    from ovclip.policy.flops import flops_to_exit, full_depth_flops

    folder = tmp_path / "conf"
    shutil.copytree(ee_folder, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("files")
    row = {"thresholds": {"1": None, "2": 0.0, "3": None}, "calibration_top1": 0.5, "calibration_flops_saving": 0.5}
    data["exit_policy"]["info"] = {"pareto": [{"budget": 0.9, "gate": dict(row), "confidence": dict(row)}]}
    write_manifest(folder, data)
    dep = Deployment(folder, runtime="stages")
    assert dep.policy.rule == "confidence" and not dep.policy.gates
    ds = open_dataset(str(labelled_folder))
    cls = dep.class_embeddings(ds.prompt_names, ["a photo of a {}."])
    (point,) = pareto_on_data(dep, ds, cls, chunk=8)
    assert set(point) == {"budget", "confidence"}
    # by hand: threshold 0.0 at exit 2 lets every image out there
    t = trace_vision(dep, ds.pixels(np.arange(len(ds)), dep.preprocess_config), dep.policy)
    top1 = float(np.mean((t["heads"][2][0] @ cls.T).argmax(1) == ds.labels))
    emb_dim = int(dep.manifest["embedding_dim"])
    at = {L: flops_to_exit(dep.vision, emb_dim, L, [1, 2, 3], len(cls)) for L in (2, dep.num_layers)}
    saving = 1 - at[2] / at[dep.num_layers]  # against full depth through every exit head, as the policy's points
    assert at[dep.num_layers] > full_depth_flops(dep.vision, emb_dim)
    assert point["confidence"]["top1"] == pytest.approx(top1)
    assert point["confidence"]["flops_saving"] == pytest.approx(saving, rel=1e-6)
