"""One `Deployment` shared by several threads gives, per image, exactly what one thread gives one image at a time.

Four threads run many batches of sizes 1, 3 and 8 at once, each thread over its own shuffled order (so a
sample meets different batch-mates in every batch), for several rounds. Every image's embedding, exit
layer and scores must equal the single-threaded batch-1 reference (max difference < 1e-6), no call may
raise, and nothing may be lost, duplicated or attributed to the wrong image. With early exit, the
thresholds are placed in wide gaps between the reference scores, so a sample's exit cannot legitimately
depend on its batch or thread: any difference is a bug (shared buffers, state leaking between requests,
active-set bookkeeping).
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from conftest import build_tiny_model

from ovclip.exits.heads import SSAHead, export_head
from ovclip.folder import write_manifest
from ovclip.policy.rules import ExitPolicy, confidence_features
from ovclip.runtime import Deployment
from ovclip.vectors import l2_normalize

THREADS, ROUNDS, N_IMAGES, SIZES = 4, 3, 48, (1, 3, 8)
EXITS = [2, 3]  # a 4-block tower cut after blocks 2 and 3: three stages, two exit heads
TOL = 1e-6
TEXTS = ["a photo of a cat", "", "日本語 🚀", "a very long caption " * 40, "a dog", "<|endoftext|>"]


def save_tiny_clip(folder: Path, seed: int = 0) -> None:
    build_tiny_model(seed).save_pretrained(folder)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    from ovclip.checkpoint import load_checkpoint
    from ovclip.export import ExportOptions, export_deployment

    root = tmp_path_factory.mktemp("threads")
    save_tiny_clip(root / "clip")
    export_deployment(load_checkpoint(str(root / "clip")), root / "fp32", ExportOptions(exits=EXITS))
    return root / "fp32"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(1)
    # different contrast per image, so head confidences and agreements spread out
    return (rng.standard_normal((N_IMAGES, 3, 64, 64)) * rng.uniform(0.2, 2.0, (N_IMAGES, 1, 1, 1))).astype(np.float32)


def _gap_threshold(values: np.ndarray) -> tuple[float, float]:
    """A threshold in the widest gap between sorted values of the middle half: (threshold, half-gap)."""
    v = np.sort(values)
    lo, hi = len(v) // 4, max(len(v) // 4 + 1, 3 * len(v) // 4)
    gaps = np.diff(v[lo : hi + 1])
    k = int(np.argmax(gaps))
    return float((v[lo + k] + v[lo + k + 1]) / 2), float(gaps[k] / 2)


@pytest.fixture(scope="module")
def early_exit(plain, images, tmp_path_factory) -> Path:
    """A copy of the export with two random SSA exit heads, a 'confidence' policy (label set) and an
    'agreement' policy (embeddings), thresholds set from single-image reference scores."""
    folder = tmp_path_factory.mktemp("ee") / "fp32-ee"
    shutil.copytree(plain, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    v = manifest["vision"]
    heads = {}
    torch.manual_seed(3)
    for layer in EXITS:
        heads[layer] = f"exit_head_{layer}.xml"
        head = SSAHead(v["hidden_size"], manifest["embedding_dim"]).eval()
        ov.save_model(export_head(head, v["tokens"], v["hidden_size"]), folder / heads[layer], compress_to_fp16=False)

    # single-image scores at each exit, as the runtime computes them
    dep = Deployment(folder, verify=False)
    classes = dep.encode_text(["a cat", "a dog", "a car", "a bag"])
    conf = {L: [] for L in EXITS}
    head_emb = {L: [] for L in EXITS}
    for x in images:
        h = x[None]
        for stage in v["stages"]:
            h = dep.infer(stage["file"], h)[0]
            end = stage["blocks"][1]
            if end in EXITS:
                e = l2_normalize(dep.infer(heads[end], h)[0])
                head_emb[end].append(e[0])
                conf[end].append(confidence_features(dep.logit_scale * e @ classes.T)[0][0])
    tau_c2, gap_c2 = _gap_threshold(np.array(conf[2]))
    stay = np.array(conf[2]) < tau_c2
    tau_c3, gap_c3 = _gap_threshold(np.array(conf[3])[stay])
    agree = np.sum(np.array(head_emb[3]) * np.array(head_emb[2]), axis=1)
    tau_a3, gap_a3 = _gap_threshold(agree)
    assert min(gap_c2, gap_c3, gap_a3) > 100 * TOL, "thresholds too close to a sample's score to be meaningful"

    manifest["exit_policy"] = ExitPolicy("confidence", EXITS, heads, {2: tau_c2, 3: tau_c3}).to_dict()
    manifest["exit_policy_embedding"] = ExitPolicy("agreement", EXITS, heads, {2: None, 3: tau_a3}).to_dict()
    write_manifest(folder, manifest)
    np.save(folder.parent / "classes.npy", classes)
    return folder


def _batches(order: list[int]) -> list[list[int]]:
    out, i, k = [], 0, 0
    while i < len(order):
        n = SIZES[k % len(SIZES)]
        out.append(order[i : i + n])
        i, k = i + n, k + 1
    return out


def run_threads(dep: Deployment, images: np.ndarray, classes: np.ndarray | None, early: bool):
    """Each thread: ROUNDS passes over its own shuffled order in batches of 1, 3, 8; texts in between."""
    results: list[list[tuple[list[int], object]]] = [[] for _ in range(THREADS)]
    texts: list[list[np.ndarray]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        try:
            rng = random.Random(t)
            start.wait()
            for r in range(ROUNDS):
                order = list(range(len(images)))
                rng.shuffle(order)
                for j, idx in enumerate(_batches(order)):
                    out = dep.run_vision(images[idx], classes, early_exit=early)
                    results[t].append((idx, out))
                    if j % 5 == r % 5:
                        texts[t].append(dep.encode_text(TEXTS))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, f"{len(errors)} thread(s) raised: {errors[0]!r}"
    return results, texts


def check(dep: Deployment, images: np.ndarray, classes: np.ndarray | None, early: bool) -> dict:
    ref = [dep.run_vision(images[i : i + 1], classes, early_exit=early) for i in range(len(images))]
    ref_emb = np.concatenate([r.embeddings for r in ref])
    ref_exit = np.concatenate([r.exit_layer for r in ref])
    ref_text = dep.encode_text(TEXTS)
    results, texts = run_threads(dep, images, classes, early)
    worst = 0.0
    for t in range(THREADS):
        seen = np.zeros(len(images), int)
        for idx, out in results[t]:
            assert out.embeddings.shape == (len(idx), ref_emb.shape[1])
            seen[idx] += 1
            diff = float(np.abs(out.embeddings - ref_emb[idx]).max())
            worst = max(worst, diff)
            assert diff < TOL, f"thread {t}, images {idx}: embeddings differ from the reference by {diff:.2e}"
            assert np.array_equal(out.exit_layer, ref_exit[idx]), f"thread {t}, images {idx}: exits differ"
            if classes is not None:
                ref_scores = np.concatenate([ref[i].scores for i in idx])
                np.testing.assert_allclose(out.scores, ref_scores, atol=1e-4)
        assert (seen == ROUNDS).all(), f"thread {t}: images lost or duplicated: {np.flatnonzero(seen != ROUNDS)}"
        for emb in texts[t]:
            assert np.abs(emb - ref_text).max() < TOL
    return {"max_diff": worst, "exit_histogram": np.bincount(ref_exit, minlength=dep.num_layers + 1).tolist()}


@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_threads_full_depth(plain, images, hint):
    dep = Deployment(plain, hint=hint)
    stats = check(dep, images, None, early=False)
    assert stats["exit_histogram"][-1] == N_IMAGES


@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_threads_early_exit_confidence(early_exit, images, hint):
    dep = Deployment(early_exit, hint=hint)
    assert dep.policy is not None and dep.policy.rule == "confidence"
    classes = np.load(early_exit.parent / "classes.npy")
    stats = check(dep, images, classes, early=True)
    hist = stats["exit_histogram"]
    assert hist[2] > 0 and hist[3] > 0 and hist[4] > 0, f"every exit must be used: {hist}"


def test_threads_early_exit_agreement(early_exit, images):
    dep = Deployment(early_exit, hint="throughput")
    assert dep.embedding_policy is not None and dep.embedding_policy.rule == "agreement"
    stats = check(dep, images, None, early=True)
    hist = stats["exit_histogram"]
    assert hist[2] == 0 and hist[3] > 0 and hist[4] > 0, f"agreement exits from the second exit on: {hist}"


def test_threads_share_compiled_models(plain, images):
    """One compiled model per IR for all threads; each thread its own infer request."""
    dep = Deployment(plain)
    seen: dict[int, list] = {}

    def work(t: int) -> None:
        dep.run_vision(images[:3])
        seen[t] = [dep._request(f) for f in dep.stage_files]  # held, so no id can be reused

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(dep._compiled) == len(dep.stage_files)
    flat = [id(r) for reqs in seen.values() for r in reqs]
    assert len(set(flat)) == len(flat) == THREADS * len(dep.stage_files)
