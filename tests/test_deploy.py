"""`ovclip deploy` for real on the tiny model: both candidates built (FP32 IR with exits calibrated on its own
tower, INT8 with exits), measured on this CPU, the winner written with its record; the float folder's early exit in
both runtimes against a hand cascade and torch; static-batch INT8 folders with exits (`quantize --static-batch 1`
and `8`): every IR static, the dynamic folder's exits, the stage path, single-stream on batch 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovclip.bench.offline_batch import pick_batch
from ovclip.bench.runner import BenchSettings, bench_folder
from ovclip.bench.variants import variants
from ovclip.data.builtin import builtin_calibration
from ovclip.data.prompts import prompt_templates
from ovclip.exits.config import ExitBuildConfig, split_calibration
from ovclip.exits.heads import HeadTrainConfig
from ovclip.export.static import folder_dynamic_inputs
from ovclip.folder import read_manifest, write_manifest
from ovclip.policy.cascade import evaluate
from ovclip.policy.trace import exit_scores, trace_for_rule
from ovclip.precision import DeploySettings, deploy
from ovclip.quantize import QuantizationConfig
from ovclip.quantize.nncf_stages import count_int8
from ovclip.quantize.pipeline import quantize_deployment
from ovclip.runtime import Deployment
from ovclip.runtime.deployment import trace_vision
from ovclip.runtime.device import device_name

N_CAL = 240  # heads 120, gate 40, thresholds (and the measurement) 80
# The paper's gate: these tests replay the gate path's recorded calibration figures (`--exit-rule auto` is
# tested in test_exit_rule_option.py and test_rule_select.py).
EXIT_CFG = ExitBuildConfig(
    flops_budget=0.9, min_images=60, head=HeadTrainConfig(epoch_candidates=(10,)), exit_rule="paper"
)
QUANT = QuantizationConfig(subset_size=8, smooth_quant_alpha=None)
EXITS = "1,3"
TEMPLATES = prompt_templates(EXIT_CFG.templates)


@pytest.fixture(scope="module")
def calibration():
    return builtin_calibration().subset(np.arange(N_CAL))


@pytest.fixture(scope="module")
def built(tiny_ckpt, calibration, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    settings = DeploySettings(rounds=2, seconds=0.3, keep_candidates=root / "candidates")
    m = deploy(tiny_ckpt, root / "deployed", calibration, settings, QUANT, EXIT_CFG, exits=EXITS)
    return root, m


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(3).standard_normal((13, 3, 64, 64)).astype(np.float32)


def _quantile_policy(dep: Deployment, px: np.ndarray, cls: np.ndarray):
    """The folder's gate policy with thresholds that send samples to every exit and to full depth (a random
    model's calibrated thresholds may send none): at each exit, in the widest gap between the scores of the
    samples still there, between their 30 % and 70 % quantiles (so float differences cannot move a sample)."""
    policy = dep.policy
    heads = trace_vision(dep, px, policy)["heads"]
    logits = {L: dep.logit_scale * e @ cls.T for L, (e, _) in heads.items()}
    scores = exit_scores(policy, logits, {L: s for L, (_, s) in heads.items()}, {L: e for L, (e, _) in heads.items()})
    taus, active = {}, np.ones(len(px), bool)
    for L, s in scores.items():
        srt = np.sort(s[active])
        lo, hi = max(1, round(0.3 * len(srt))), max(2, round(0.7 * len(srt)))
        k = lo + int(np.argmax(np.diff(srt)[lo - 1 : hi - 1]))
        taus[L] = float(srt[k - 1 : k + 1].mean())
        active &= s < taus[L]
    return policy.with_thresholds(taus), scores, heads


def _hand_cascade(scores: dict, thresholds: dict, exits: list[int], n_layers: int) -> np.ndarray:
    out = []
    for i in range(len(next(iter(scores.values())))):
        out.append(next((L for L in exits if scores[L][i] >= thresholds[L]), n_layers))
    return np.array(out)


# --- the deployed folder and its record ------------------------------------------------------------------------


def test_the_record_says_what_was_measured_and_the_choice_follows_from_it(built):
    root, m = built
    d = m["deployed"]
    assert d["chosen_by"] == "precision='auto' (measured)" and d["device"] == "CPU"
    assert d["measured_on"]["images"] == N_CAL - 120 - 40  # the exit calibration's threshold split
    assert d["tolerance"] == {"top1_points": 0.5, "cosine": 0.02} and d["metric"] == "top1"
    by = {c["name"]: c for c in d["candidates"]}
    expected = {v.name for f in ("float", "int8") for v in variants(read_manifest(root / "candidates" / f))}
    assert set(by) == expected and {"fp32", "fp32-ee", "int8", "int8-ee"} <= expected
    assert all(len(c["throughput_fps_rounds"]) == 2 for c in by.values())
    ref = by["fp32"]
    assert ref["reference"] and ref["below_fp32"] == 0 and ref["mean_cosine_to_fp32"] == pytest.approx(1, abs=1e-6)
    for c in by.values():
        assert c["below_fp32"] == pytest.approx(100 * (ref["top1"] - c["top1"]))
        assert c["within_tolerance"] == (c["below_fp32"] <= 0.5 + 1e-9)
        assert c["throughput_fps_median"] == pytest.approx(np.median(c["throughput_fps_rounds"]))
    fastest = max((c for c in by.values() if c["within_tolerance"]), key=lambda c: c["throughput_fps_median"])
    assert d["chosen"] == fastest["name"]
    assert d["inference_precision"] == fastest["executed_precision"] and d["early_exit"] == fastest["early_exit"]
    # the winner's offline batch: measured on its own deployed variant, recorded with the CPU it was measured on
    batch = d["offline_batch"]
    assert batch["chosen_by"] == "measured" and d["device_name"] == device_name("CPU")
    assert batch["batch"] == pick_batch({int(b): s["median"] for b, s in batch["throughput_fps"].items()})
    assert d["timing"]["batch"][chosen_folder(d)] == batch["batch"]


def test_the_deployed_folder_is_the_chosen_candidate(built):
    root, m = built
    chosen = next(c for c in m["deployed"]["candidates"] if c["name"] == m["deployed"]["chosen"])
    candidate = read_manifest(root / "candidates" / chosen["folder"])
    assert read_manifest(root / "deployed").data["files"] == candidate.data["files"]  # checksums verified too
    assert m.variant == candidate.variant and m["exit_policy"] == candidate["exit_policy"]


def test_deployment_and_bench_run_the_recorded_choice(built, calibration):
    root, m = built
    d = m["deployed"]
    dep = Deployment(root / "deployed")
    assert dep.executed_precision() == d["inference_precision"] and dep.deployed_early_exit == d["early_exit"]
    data = calibration.subset(np.arange(16))
    recs = bench_folder(root / "deployed", BenchSettings(seconds=0.2, rounds=1, pool=16), data, TEMPLATES)
    assert [r["variant"] for r in recs if r["deployed"]] == [d["chosen"]]
    assert all(r["batch_choice"]["chosen_by"].startswith("recorded by `ovclip deploy`") for r in recs)
    assert all(r["batch"] == min(16, d["offline_batch"]["batch"]) for r in recs)  # 16 images: one call at most


def chosen_folder(d: dict) -> str:
    return next(c["folder"] for c in d["candidates"] if c["name"] == d["chosen"])


def test_a_recorded_precision_and_full_depth_are_what_deployment_runs(built, tmp_path, pixels):
    root, _ = built
    folder = tmp_path / "float"
    shutil.copytree(root / "candidates" / "float", folder)
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("files")
    data["deployed"] = {"inference_precision": "bf16", "early_exit": False}
    write_manifest(folder, data)
    dep = Deployment(folder)
    assert (
        dep.executed_precision() == "bf16"
        and Deployment(folder, inference_precision="f32").executed_precision() == "f32"
    )
    cls = np.eye(4, 32, dtype=np.float32)
    out = dep.run_vision(pixels, cls)  # the folder has a policy, but deploys full depth
    assert (out.exit_layer == dep.num_layers).all()
    assert (dep.run_vision(pixels, cls, policy=dep.policy.with_thresholds({1: -1.0})).exit_layer == 1).all()


def test_cli_deploy_with_a_given_precision_builds_only_that_folder(tmp_path):
    from click.testing import CliRunner

    from ovclip.cli import main

    out = tmp_path / "dep"
    args = ["deploy", "--model", "random:tiny", "--precision", "f32", "--out", str(out), "--static-batch", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "random weights: exit heads would be meaningless" in res.output
    m = read_manifest(out)
    assert m.variant == "fp32" and m.get("exit_policy") is None and m["static_batch"] == 2
    assert m["deployed"] == {
        "inference_precision": "f32",
        "early_exit": False,
        "chosen_by": "precision='f32' (given; nothing measured)",
    }
    assert folder_dynamic_inputs(out) == {f: [] for f in folder_dynamic_inputs(out)}
    assert not [p for p in tmp_path.iterdir() if p.name != "dep"]  # no candidate folder left behind
    bad = CliRunner().invoke(main, ["deploy", "--no-exits", "--max-drop", "0.5", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--flops-budget/--max-drop set an exit policy; drop --no-exits" in bad.output


# --- the float folder with exits -------------------------------------------------------------------------------


def test_float_folder_carries_exits_calibrated_on_its_own_tower(built, tiny_clip, photos):
    root, _ = built
    folder = root / "candidates" / "float"
    m = read_manifest(folder)
    assert m.variant == "fp32" and m.vision["exits"] == [1, 3] and m["exit_policy"]["exits"] == [1, 3]
    info = m["exit_policy"]["info"]
    assert info["tower"] == "fp32" and info["inr"] == {} and info["kappa"] is None
    from ovclip.ir import read_model

    for s in m.vision["stages"]:  # float IR: nothing quantized
        assert count_int8(read_model(folder / s["file"])) == {"fake_quantize": 0, "int8_constants": 0}
    dep = Deployment(folder)
    px = dep.preprocess(photos)
    with torch.no_grad():
        ref = F.normalize(tiny_clip.model.get_image_features(pixel_values=torch.from_numpy(px)).pooler_output, dim=-1)
    np.testing.assert_allclose(dep.run_vision(px, early_exit=False).embeddings, ref.numpy(), atol=1e-4)


def test_float_folder_early_exit_is_the_same_in_both_runtimes_and_the_hand_cascade(built, pixels):
    root, _ = built
    folder = root / "candidates" / "float"
    stages, graph = Deployment(folder, runtime="stages"), Deployment(folder, runtime="graph")
    cls = np.random.default_rng(4).standard_normal((5, 32)).astype(np.float32)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    policy, scores, heads = _quantile_policy(stages, pixels, cls)
    a = stages.run_vision(pixels, cls, policy=policy)
    b = graph.run_vision(pixels, cls, policy=policy)
    hand = _hand_cascade(scores, policy.thresholds, policy.exits, stages.num_layers)
    assert len(set(hand.tolist())) == 3, hand  # exits 1, 3 and full depth all taken
    np.testing.assert_array_equal(a.exit_layer, hand)
    np.testing.assert_array_equal(b.exit_layer, hand)
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-5)
    for i, L in enumerate(hand):
        if stages.num_layers > L:
            np.testing.assert_allclose(a.embeddings[i], heads[int(L)][0][i], atol=1e-5)


def test_float_policy_replayed_on_its_threshold_split_gives_the_recorded_figures(built, calibration):
    """The thresholds were chosen on the float tower's own head outputs: running the folder on the same images
    reproduces the accuracy and FLOPs saving the build recorded (up to fp16 head weights: one image)."""
    root, _ = built
    dep = Deployment(root / "candidates" / "float")
    idx = split_calibration(N_CAL, EXIT_CFG)[2]
    data = calibration.subset(idx)
    policy = dep.policy
    cls = dep.class_embeddings(data.prompt_names, TEMPLATES)
    traced = trace_vision(dep, data.pixels(np.arange(len(data)), dep.preprocess_config), policy)
    trace = trace_for_rule(
        policy, "gate", traced["heads"], traced["final"], cls, data.labels, dep.logit_scale, dep.vision, 32
    )
    acc, flops, _ = evaluate(trace, policy.thresholds)
    rec = policy.info["rules"]["gate"]
    assert abs(acc - rec["calibration_top1"]) <= 1 / len(idx) + 1e-9
    assert trace.full_correct.mean() == pytest.approx(rec["calibration_full_depth_top1"], abs=1 / len(idx) + 1e-9)
    assert 1 - flops / trace.flops[trace.num_layers] == pytest.approx(rec["calibration_flops_saving"], abs=0.02)


# --- static-batch INT8 folders with exits ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 8], ids=["static1", "static8"])
def static(request, tiny_ckpt, calibration, tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / f"int8-static{request.param}"
    quantize_deployment(
        tiny_ckpt, out, calibration, QUANT, exits=EXITS, static_batch=request.param, early_exit=EXIT_CFG
    )
    return request.param, out


def test_every_input_of_every_ir_in_a_static_folder_is_static(static, built):
    batch, folder = static
    m = read_manifest(folder)
    assert m["static_batch"] == batch and m["exit_policy"]["exits"] == [1, 3]
    shapes = folder_dynamic_inputs(folder)
    assert {"exit_head_1.xml", "exit_head_3.xml", "text.xml", "vision_stage0.xml"} <= set(shapes)
    assert shapes == {f: [] for f in shapes}
    from ovclip.ir import read_model

    for f in shapes:
        assert all(p.get_partial_shape()[0].get_length() == batch for p in read_model(folder / f).inputs)
    # the check finds what a dynamic folder has: every IR with a dynamic batch
    dynamic = folder_dynamic_inputs(built[0] / "candidates" / "int8")
    assert dynamic["exit_head_1.xml"] == ["hidden_states [?,5,64]"] and all(dynamic.values())


def test_static_folder_has_the_dynamic_folders_exits_and_weights(static, built):
    _, folder = static
    dyn = read_manifest(built[0] / "candidates" / "int8")
    m = read_manifest(folder)
    assert m["exit_policy"] == dyn["exit_policy"] and m["exit_policy_embedding"] == dyn["exit_policy_embedding"]
    # the vision stages and exit heads hold the same weights, byte for byte (the text tower's causal mask is folded
    # into a constant once its shape is static, so its .bin differs; its embeddings are compared below)
    bins = {f: h for f, h in m.data["files"].items() if f.endswith(".bin") and f != "text.bin"}
    assert bins == {f: h for f, h in dyn.data["files"].items() if f.endswith(".bin") and f != "text.bin"}
    assert len(bins) == 5
    prompts = ["a photo of a sneaker.", "a photo of a bag.", "a photo of a coat."]
    np.testing.assert_allclose(
        Deployment(folder).encode_text(prompts),
        Deployment(built[0] / "candidates" / "int8").encode_text(prompts),
        atol=1e-5,
    )


def test_static_folder_runs_the_stage_path_as_the_dynamic_folder(static, built, pixels):
    batch, folder = static
    dyn = Deployment(built[0] / "candidates" / "int8", runtime="stages")
    st = Deployment(folder)
    assert st.runtime == "stages"
    cls = np.random.default_rng(5).standard_normal((5, 32)).astype(np.float32)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    policy, _, _ = _quantile_policy(dyn, pixels, cls)
    a, b = st.run_vision(pixels, cls, policy=policy), dyn.run_vision(pixels, cls, policy=policy)  # 13: padded
    assert len(set(b.exit_layer.tolist())) == 3, b.exit_layer
    np.testing.assert_array_equal(a.exit_layer, b.exit_layer)
    # Static and dynamic shapes may pick different INT8 kernels (accumulation order): on one CI CPU 23 of 416 values
    # differed by up to 6.6e-4 while every exit and class agreed. Same model, not bit-equal arithmetic.
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=3e-3)
    cos = np.sum(a.embeddings * b.embeddings, axis=1) / (
        np.linalg.norm(a.embeddings, axis=1) * np.linalg.norm(b.embeddings, axis=1)
    )
    assert cos.min() > 0.9999, cos


def test_static_folder_benches_with_the_dynamic_folders_exits(static, built, calibration):
    """Through the stage path; the batch-1 folder in the single-stream scenario (one image per query)."""
    batch, folder = static
    data = calibration.subset(np.arange(24))
    scenario = "single-stream" if batch == 1 else "offline"
    settings = BenchSettings(seconds=0.2, rounds=1, pool=24, scenario=scenario)
    recs = {r["variant"]: r for r in bench_folder(folder, settings, data, TEMPLATES)}
    dyn = {r["variant"]: r for r in bench_folder(built[0] / "candidates" / "int8", settings, data, TEMPLATES)}
    assert recs["int8-ee"]["runtime"] == "stages" and recs["int8-ee"]["batch"] == batch
    assert recs["int8-ee"]["exit_histogram"] == dyn["int8-ee"]["exit_histogram"]
    assert recs["int8-ee"]["top1"] == dyn["int8-ee"]["top1"] and recs["int8"]["top1"] == dyn["int8"]["top1"]
