"""Early exit: the runtime's cascade against independent torch computations, batch compaction,
threshold search and the gate fit, and the whole quantize-with-exits path on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import pytest
import torch
import torch.nn.functional as F
from conftest import EMBED, IMAGE, V_LAYERS, WIDTH, build_tiny_model

from ovclip.checkpoint import load_checkpoint
from ovclip.exits.gate_fit import fit_gate
from ovclip.exits.heads import SSAHead, export_head
from ovclip.exits.thresholds import drop_upper_bound, for_budget, for_max_drop, grid
from ovclip.export import ExportOptions, export_deployment
from ovclip.folder import read_manifest, write_manifest
from ovclip.policy.cascade import Trace, evaluate, exit_layers
from ovclip.policy.rules import ExitPolicy, gate_feature_values
from ovclip.runtime import Deployment

LAYERS, EMB, IMG = V_LAYERS, EMBED, IMAGE  # the shared tiny CLIP's shape
EXITS = [1, 2, 3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = build_tiny_model(0, intermediate=128)
    root = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(root / "hf")
    ckpt = load_checkpoint(str(root / "hf"))
    folder = root / "fp32"
    export_deployment(ckpt, folder, ExportOptions(exits=",".join(map(str, EXITS))))
    heads = {}
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("files")
    tokens = (IMG // 32) ** 2 + 1
    for L in EXITS:
        torch.manual_seed(L)
        heads[L] = SSAHead(WIDTH, EMB).eval()
        ov.save_model(export_head(heads[L], tokens, WIDTH), folder / f"exit_head_{L}.xml", compress_to_fp16=False)
    policy = ExitPolicy("confidence", EXITS, {L: f"exit_head_{L}.xml" for L in EXITS}, {L: None for L in EXITS})
    data["exit_policy"] = policy.to_dict()
    write_manifest(folder, data)
    return model, heads, folder, policy


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).standard_normal((7, 3, IMG, IMG)).astype(np.float32)


def _torch_reference(model, heads, px):
    with torch.no_grad():
        out = model.vision_model(pixel_values=torch.from_numpy(px), output_hidden_states=True)
        hidden = out.hidden_states  # hidden[L] is after block L
        full = F.normalize(model.get_image_features(pixel_values=torch.from_numpy(px)).pooler_output, dim=-1)
        head = {L: F.normalize(heads[L](hidden[L][:, 1:].mean(1)), dim=-1) for L in heads}
    return full.numpy(), {L: h.numpy() for L, h in head.items()}


RUNTIMES = ["graph", "stages"]  # one OpenVINO graph per policy; stage by stage from Python (NPU's path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_never_exit_gives_exact_full_depth(tiny, pixels, runtime):
    model, heads, folder, policy = tiny
    dep = Deployment(folder, runtime=runtime)
    cls = np.eye(3, EMB, dtype=np.float32)
    off = dep.run_vision(pixels, cls, early_exit=False)
    never = dep.run_vision(pixels, cls, policy=policy.with_thresholds({L: None for L in EXITS}))
    assert np.array_equal(off.embeddings, never.embeddings)
    assert (never.exit_layer == LAYERS).all()
    full, _ = _torch_reference(model, heads, pixels)
    cos = np.sum(off.embeddings * full, axis=1)
    assert cos.min() > 0.9999


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("layer", EXITS)
def test_always_exit_at_layer_gives_that_heads_output(tiny, pixels, layer, runtime):
    model, heads, folder, policy = tiny
    dep = Deployment(folder, runtime=runtime)
    cls = np.eye(3, EMB, dtype=np.float32)
    thresholds = {L: (-1.0 if layer == L else None) for L in EXITS}  # confidence is always >= -1
    out = dep.run_vision(pixels, cls, policy=policy.with_thresholds(thresholds))
    assert (out.exit_layer == layer).all()
    _, head = _torch_reference(model, heads, pixels)
    assert np.abs(out.embeddings - head[layer]).max() < 1e-5
    assert np.allclose(out.scores, dep.logit_scale * head[layer] @ cls.T, atol=1e-3)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batch_compaction_keeps_order_and_every_sample(tiny, runtime):
    model, heads, folder, policy = tiny
    dep = Deployment(folder, runtime=runtime)
    rng = np.random.default_rng(1)
    px = rng.standard_normal((23, 3, IMG, IMG)).astype(np.float32)
    cls = rng.standard_normal((5, EMB)).astype(np.float32)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    # thresholds at the median confidence of each exit, so samples leave at every exit and some reach the end
    probe = dep.run_vision(px, cls, policy=policy.with_thresholds({EXITS[0]: -1.0}))
    conf = np.exp(probe.scores - probe.scores.max(1, keepdims=True))
    conf = (conf / conf.sum(1, keepdims=True)).max(1)
    tau = float(np.quantile(conf, 0.6))
    mixed = policy.with_thresholds({L: tau for L in EXITS})
    batch = dep.run_vision(px, cls, policy=mixed)
    assert len(set(batch.exit_layer.tolist())) >= 3, batch.exit_layer
    for i in range(len(px)):
        one = dep.run_vision(px[i : i + 1], cls, policy=mixed)
        assert one.exit_layer[0] == batch.exit_layer[i]
        assert np.abs(one.embeddings[0] - batch.embeddings[i]).max() < 1e-5
    _, head = _torch_reference(model, heads, px)
    full, _ = _torch_reference(model, heads, px)
    for i, L in enumerate(batch.exit_layer):
        ref = full[i] if L == LAYERS else head[int(L)][i]
        assert np.abs(batch.embeddings[i] - ref).max() < 1e-4


def _gate_policy(policy: ExitPolicy, sav: dict[int, np.ndarray]) -> ExitPolicy:
    from ovclip.policy.rules import Gate

    w = np.array([2.0, -1.0, 0.5])
    mu_sd = {L: (np.array([0.5, 0.2, sav[L].mean()]), np.array([0.2, 0.1, sav[L].std()])) for L in EXITS}
    gates = {L: Gate(w, 0.1, *mu_sd[L]) for L in EXITS}
    return ExitPolicy("gate", EXITS, policy.heads, {L: None for L in EXITS}, gates)


def _agreement_gate_policy(policy: ExitPolicy, sav: dict[int, np.ndarray]) -> ExitPolicy:
    """Paper gate at the first exit; later exits also read agreement with the previous exit."""
    from ovclip.policy.rules import Gate

    first = _gate_policy(policy, sav).gates[EXITS[0]]
    feats = ("confidence", "agreement", "same_top1", "sav")
    later = {
        L: Gate(
            np.array([1.5, 3.0, 0.7, -0.2]),
            -0.3,
            np.array([0.5, 0.4, 0.5, sav[L].mean()]),
            np.array([0.2, 0.3, 0.5, sav[L].std()]),
            feats,
        )
        for L in EXITS[1:]
    }
    return ExitPolicy("gate", EXITS, policy.heads, {L: None for L in EXITS}, {EXITS[0]: first, **later})


def _fidelity_policy(policy: ExitPolicy) -> ExitPolicy:
    """Label-free fidelity rule: a linear model of the embedding, agreement with the previous exit from the second."""
    from ovclip.policy.rules import FidelityModel

    rng = np.random.default_rng(5)
    models = {L: FidelityModel(rng.standard_normal(EMB), 0.3, 0.0 if j == 0 else 1.5) for j, L in enumerate(EXITS)}
    return ExitPolicy("fidelity", EXITS, policy.heads, {L: None for L in EXITS}, predictors=models)


@pytest.mark.parametrize("rule", ["gate", "gate-agreement", "confidence", "agreement", "fidelity"])
def test_one_graph_runtime_decides_like_the_python_cascade(tiny, rule):
    """Same exits and embeddings from the one-graph runtime as from the stage-by-stage numpy cascade."""
    model, heads, folder, policy = tiny
    rng = np.random.default_rng(2)
    px = rng.standard_normal((41, 3, IMG, IMG)).astype(np.float32)
    cls = rng.standard_normal((6, EMB)).astype(np.float32)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    stages = Deployment(folder, runtime="stages")
    graph = Deployment(folder, runtime="graph")
    heads_out = stages_trace(stages, px, policy)
    trace = {L: e for L, (e, _) in heads_out.items()}
    sav = {L: s for L, (_, s) in heads_out.items()}
    base = {
        "gate": _gate_policy(policy, sav),
        "gate-agreement": _agreement_gate_policy(policy, sav),
        "confidence": policy,
        "fidelity": _fidelity_policy(policy),
    }.get(rule) or ExitPolicy("agreement", EXITS, policy.heads, {L: None for L in EXITS})
    # per exit, a threshold near the 40% quantile of that exit's scores, so every exit takes some samples
    thresholds, prev, prev_scores = {}, None, None
    for L in EXITS:
        scores = stages.logit_scale * trace[L] @ cls.T
        s = base.score(L, scores, sav[L], prev, trace[L], prev_scores)
        srt = np.sort(s[np.isfinite(s)])  # halfway between two scores: no sample sits on the threshold
        thresholds[L] = None if len(srt) < 2 else float(srt[len(srt) * 2 // 5 - 1 : len(srt) * 2 // 5 + 1].mean())
        prev, prev_scores = trace[L], scores
    mixed = base.with_thresholds(thresholds)
    ref = stages.run_vision(px, cls, policy=mixed)
    out = graph.run_vision(px, cls, policy=mixed)
    assert len(set(ref.exit_layer.tolist())) >= 3, ref.exit_layer
    np.testing.assert_array_equal(out.exit_layer, ref.exit_layer)
    np.testing.assert_allclose(out.embeddings, ref.embeddings, atol=1e-5)
    np.testing.assert_allclose(out.scores, ref.scores, atol=1e-3)
    # one image at a time: the If-branch graph (an image that exits skips the rest), image for image the same
    singles = [graph.run_vision(px[i : i + 1], cls, policy=mixed) for i in range(len(px))]
    assert any(k.startswith("one:") for k in graph._graphs), list(graph._graphs)
    np.testing.assert_array_equal(np.concatenate([o.exit_layer for o in singles]), ref.exit_layer)
    # static shapes may pick other kernels than dynamic ones (CI's CPU did for INT8): a looser bound, exits exact
    np.testing.assert_allclose(np.concatenate([o.embeddings for o in singles]), ref.embeddings, atol=1e-4)
    one = graph._graphs[next(k for k in graph._graphs if k.startswith("one:"))]  # compiled for exactly one image
    assert [i.get_partial_shape().is_static for i in one.inputs] == [True] * len(one.inputs)
    # every sample leaves at the last exit: the final block runs on an empty batch inside the graph
    last = base.with_thresholds({L: (-1e9 if EXITS[-1] == L else None) for L in EXITS})
    out = graph.run_vision(px[:3], cls, policy=last)
    assert (out.exit_layer == EXITS[-1]).all()
    np.testing.assert_allclose(out.embeddings, trace[EXITS[-1]][:3], atol=1e-5)


def test_auto_runtime_falls_back_to_stages_when_the_graph_cannot_be_built(tiny, pixels, monkeypatch):
    import ovclip.runtime.deployment as runtime_module
    from ovclip.errors import OvclipError

    model, heads, folder, policy = tiny

    def unsupported(*args, **kwargs):
        raise OvclipError("OpenVINO could not compile the model for CPU: NonZero is not supported")

    monkeypatch.setattr(runtime_module, "exit_graph", unsupported)
    cls = np.eye(3, EMB, dtype=np.float32)
    mixed = policy.with_thresholds({L: 0.4 for L in EXITS})
    dep = Deployment(folder)
    assert dep.runtime == "graph"
    out = dep.run_vision(pixels, cls, policy=mixed)
    assert dep.runtime == "stages"
    ref = Deployment(folder, runtime="stages").run_vision(pixels, cls, policy=mixed)
    np.testing.assert_array_equal(out.exit_layer, ref.exit_layer)
    np.testing.assert_array_equal(out.embeddings, ref.embeddings)
    with pytest.raises(OvclipError, match="NonZero is not supported"):
        Deployment(folder, runtime="graph").run_vision(pixels, cls, policy=mixed)


def test_one_image_falls_back_to_the_compaction_graph_when_if_cannot_compile(tiny, pixels, monkeypatch):
    import ovclip.runtime.deployment as runtime_module
    from ovclip.errors import OvclipError

    model, heads, folder, policy = tiny

    def unsupported(*args, **kwargs):
        raise OvclipError("OpenVINO could not compile the model for CPU: If is not supported")

    monkeypatch.setattr(runtime_module, "exit_branches", unsupported)
    cls = np.eye(3, EMB, dtype=np.float32)
    mixed = policy.with_thresholds({L: 0.4 for L in EXITS})
    dep = Deployment(folder)
    out = [dep.run_vision(pixels[i : i + 1], cls, policy=mixed) for i in range(len(pixels))]
    assert dep.runtime == "graph" and not dep._one_image
    assert all(k.startswith("graph:") for k in dep._graphs)
    ref = Deployment(folder, runtime="stages").run_vision(pixels, cls, policy=mixed)
    np.testing.assert_array_equal(np.concatenate([o.exit_layer for o in out]), ref.exit_layer)
    np.testing.assert_allclose(np.concatenate([o.embeddings for o in out]), ref.embeddings, atol=1e-5)


def test_graph_cache_is_bounded_and_recompiles_evicted_policies(tiny, pixels, monkeypatch):
    import ovclip.runtime.deployment as runtime_module

    model, heads, folder, policy = tiny
    monkeypatch.setattr(runtime_module, "GRAPH_CACHE_SIZE", 2)
    dep = Deployment(folder, runtime="graph")
    cls = np.eye(3, EMB, dtype=np.float32)
    outs = [dep.run_vision(pixels, cls, policy=policy.with_thresholds({L: t for L in EXITS})) for t in (0.2, 0.5, 0.9)]
    assert len(dep._graphs) == 2
    again = dep.run_vision(pixels, cls, policy=policy.with_thresholds({L: 0.2 for L in EXITS}))  # evicted: rebuilt
    assert len(dep._graphs) == 2 and len(dep._tls.graph_reqs) <= 3
    np.testing.assert_array_equal(again.exit_layer, outs[0].exit_layer)
    np.testing.assert_array_equal(again.embeddings, outs[0].embeddings)


def test_select_head_keeps_the_length_most_accurate_on_the_held_out_split():
    from ovclip.exits.heads import HeadTrainConfig, head_embeddings, select_head

    rng = np.random.default_rng(0)
    classes = np.linalg.qr(rng.standard_normal((16, 4)))[0].T.astype(np.float32)  # 4 orthonormal class embeddings
    labels = rng.integers(0, 4, 300)
    pooled = (classes[labels] @ rng.standard_normal((16, 12)) + 0.8 * rng.standard_normal((300, 12))).astype(np.float32)
    target = classes[labels]
    train, val = np.arange(200), np.arange(200, 300)
    cfg = HeadTrainConfig(epoch_candidates=(1, 30), batch_size=64)
    head, epochs, acc = select_head(pooled, labels, classes, target, 10.0, train, val, cfg)
    assert set(acc) == {1, 30}
    got = float(np.mean((head_embeddings(head, pooled[val]) @ classes.T).argmax(1) == labels[val]))
    assert got == max(acc.values())
    assert acc[30] > acc[1] and epochs == 30  # one epoch of 4 steps has not learned the classes yet


def test_calibration_class_embeddings_match_torch_and_the_runtime(tiny):
    """The class embeddings the exit heads are trained against: every template filled by plain substitution (a
    name holding braces stays as it is), embedded by the text IR, ensembled over templates. The same as
    transformers in torch, and as the runtime computes them from the folder."""
    from ovclip.exits.build import class_text_embeddings
    from ovclip.export.exporter import convert_text

    model, _, folder, _ = tiny
    ckpt = load_checkpoint(str(folder.parent / "hf"))
    names, templates = ["sneaker", "bag {0}"], ["a photo of a {}.", "{}, seen from above"]
    ours = class_text_embeddings(convert_text(ckpt.model), ckpt.tokenizer, names, templates)
    prompts = ["a photo of a sneaker.", "sneaker, seen from above", "a photo of a bag {0}.", "bag {0}, seen from above"]
    with torch.no_grad():
        out = model.get_text_features(input_ids=torch.from_numpy(ckpt.tokenizer(prompts)))
        text = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
        ref = F.normalize(text.reshape(2, 2, -1).mean(1), dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(ours, Deployment(folder).class_embeddings(names, templates), atol=1e-6)


def test_unknown_runtime_is_one_line_error(tiny):
    from ovclip.errors import OvclipError

    with pytest.raises(OvclipError, match="runtime='fast': choose one of auto, graph, stages") as e:
        Deployment(tiny[2], runtime="fast")
    assert e.value.params == ("runtime",)


def stages_trace(dep: Deployment, px: np.ndarray, policy: ExitPolicy) -> dict:
    from ovclip.runtime.deployment import trace_vision

    return trace_vision(dep, px, policy)["heads"]


def _trace(n=400, seed=0):
    rng = np.random.default_rng(seed)
    exits = [2, 3]
    score = {e: rng.random(n) for e in exits}
    # an exit is right more often when its score is high; full depth is right 70% of the time
    correct = {e: rng.random(n) < 0.4 + 0.55 * score[e] for e in exits}
    full = rng.random(n) < 0.7
    flops = {2: 50.0, 3: 75.0, 4: 100.0}
    return Trace(exits, score, correct, full, flops, 4)


def test_cascade_by_hand():
    tr = Trace(
        [1, 2],
        {1: np.array([0.9, 0.1, 0.1]), 2: np.array([0.0, 0.8, 0.2])},
        {1: np.array([True, False, False]), 2: np.array([False, True, False])},
        np.array([False, False, True]),
        {1: 10.0, 2: 20.0, 3: 30.0},
        3,
    )
    t = {1: 0.5, 2: 0.5}
    assert exit_layers(tr, t).tolist() == [1, 2, 3]
    acc, fl, corr = evaluate(tr, t)
    assert acc == 1.0 and fl == pytest.approx(20.0) and corr.tolist() == [True, True, True]
    assert evaluate(tr, {1: None, 2: None})[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("budget", [0.6, 0.8, 0.95])
def test_budget_search_respects_budget_and_beats_every_feasible_grid_point(budget):
    tr = _trace()
    grids = {e: grid(tr.score[e], 9) for e in tr.exits}
    t, acc, fl = for_budget(tr, grids, budget)
    assert fl <= budget * 100 + 1e-9
    for a in grids[2]:
        for b in grids[3]:
            acc2, fl2, _ = evaluate(tr, {2: a, 3: b})
            if fl2 <= budget * 100:
                assert acc2 <= acc + 1e-12


def test_drop_bound_against_hand_binomial():
    from scipy.stats import beta

    exit_correct = np.array([True] * 90 + [False] * 10)
    full = np.array([True] * 85 + [False] * 5 + [True] * 10)  # loss 10, rescue 5
    hi = beta.ppf(0.975, 11, 90)
    lo = beta.ppf(0.025, 5, 96)
    assert drop_upper_bound(exit_correct, full, 0.95) == pytest.approx(hi - lo)


def test_max_drop_search_meets_its_bound():
    tr = _trace(2000, 1)
    grids = {e: grid(tr.score[e], 11) for e in tr.exits}
    t, acc, fl = for_max_drop(tr, grids, 0.02)
    _, _, corr = evaluate(tr, t)
    assert drop_upper_bound(corr, tr.full_correct) < 0.02


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_gate_fit_is_the_penalised_maximum_likelihood(ridge):
    """The gate zeroes the gradient of NLL + ridge/2 |w|^2 (intercept free) on standardised features, computed
    here by hand; the objective is convex, so that is its minimum."""
    rng = np.random.default_rng(0)
    n = 3000
    logits = rng.standard_normal((n, 6)) * 2
    sav = rng.random(n) * 5
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = rng.random(n) < 1 / (1 + np.exp(-(4 * p.max(1) - 0.3 * sav)))
    gate = fit_gate(logits, sav, y, ridge=ridge)
    assert gate.features == ("confidence", "margin", "sav")
    x = gate_feature_values(gate.features, logits, sav)
    np.testing.assert_allclose(gate.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(gate.sd, x.std(0), rtol=1e-9)
    z = (x - gate.mu) / gate.sd
    prob = 1 / (1 + np.exp(-(z @ gate.w + gate.b)))
    np.testing.assert_allclose(gate(logits, sav), prob, rtol=1e-12)
    assert np.abs(z.T @ (prob - y) + ridge * gate.w).max() < 1e-6
    assert abs(np.sum(prob - y)) < 1e-6
    assert abs(gate.w[0]) > 0.5  # confidence carries the signal


def test_roc_auc_and_cv_auc_against_hand_computations():
    from sklearn.model_selection import StratifiedKFold

    from ovclip.exits.gate_fit import cv_auc, fit_logistic, roc_auc

    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.6
    s = np.round(rng.standard_normal(300) + y, 1)  # rounded: many ties
    pairs = [float(a > b) + 0.5 * float(a == b) for a in s[y] for b in s[~y]]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert roc_auc(np.ones(5, bool), s[:5]) == 0.5  # one class only: no ranking to measure
    assert cv_auc(s[:, None], y) == roc_auc(y, s)  # one column is its own score
    # two columns: out-of-fold scores of fits on the other folds (standardised on the training part), pooled
    x = np.stack([s, rng.standard_normal(300)], 1)
    oof = np.empty(300)
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        w, b, mu, sd = fit_logistic(x[train], y[train])
        oof[test] = ((x[test] - mu) / sd) @ w + b
    assert cv_auc(x, y) == pytest.approx(roc_auc(y, oof), abs=1e-9)


def test_quantize_with_exits_end_to_end(tiny, tmp_path):
    from ovclip.bench.runner import BenchSettings, bench_folder
    from ovclip.data.builtin import builtin_calibration, builtin_eval
    from ovclip.exits.config import DEFAULT_MIN_FIDELITY, ExitBuildConfig
    from ovclip.exits.heads import HeadTrainConfig
    from ovclip.quantize import QuantizationConfig
    from ovclip.quantize.pipeline import quantize_deployment

    model, _, folder, _ = tiny
    ckpt = load_checkpoint(str(folder.parent / "hf"))
    calib = builtin_calibration().subset(np.arange(600))
    exit_config = ExitBuildConfig(
        flops_budget=0.9, min_images=300, head=HeadTrainConfig(epochs=3), gate_features="select"
    )
    out = tmp_path / "int8"
    m = quantize_deployment(
        ckpt,
        out,
        calib,
        QuantizationConfig(subset_size=16, smooth_quant_alpha=None),
        exits="1,2,3",
        early_exit=exit_config,
    )
    policy = m["exit_policy"]
    assert policy["rule"] == "gate" and policy["exits"] == [1, 2, 3]
    assert set(policy["gates"]) == {"1", "2", "3"}
    # each gate names the features it reads: the CV-chosen set of its exit, recorded with every candidate's AUC
    assert policy["info"]["gate_features"]["mode"] == "select"
    for L, g in policy["gates"].items():
        chosen = policy["info"]["gate_features"]["per_exit"][L]
        assert g["features"] == chosen["features"] and "+".join(g["features"]) in chosen["cv_auc_gate_split"]
    assert not {"agreement", "same_top1"} & set(policy["gates"]["1"]["features"])
    # runs without a label set use the label-free fidelity rule, calibrated on the same (labelled) images
    embedding_policy = m["exit_policy_embedding"]
    assert embedding_policy["rule"] == "fidelity" and embedding_policy["exits"] == [1, 2, 3]
    assert embedding_policy["info"]["calibration_data"]["labelled"] is True
    assert embedding_policy["info"]["objective"]["min_fidelity"] == DEFAULT_MIN_FIDELITY
    assert embedding_policy["info"]["calibration_fidelity_lower_bound_95"] >= DEFAULT_MIN_FIDELITY
    assert read_manifest(out).vision["exits"] == [1, 2, 3]
    info = policy["info"]
    assert info["splits"]["heads"] + info["splits"]["gate"] + info["splits"]["thresholds"] == 600
    assert info["rules"]["gate"]["calibration_flops_saving"] >= 0.1 - 1e-9
    data = builtin_eval().subset(np.arange(48))
    recs = bench_folder(out, BenchSettings(seconds=0.3, batch=8, pool=16), data, ["a photo of a {}."])
    assert [r["variant"] for r in recs] == ["int8", "int8-ee"]
    exit_record = recs[1]
    assert sum(exit_record["exit_histogram"].values()) == 48
    assert exit_record["rescue"]["n"] == 48
    q = exit_record["rescue"]
    assert q["both_correct"] + q["rescue"] == round(exit_record["top1"] * 48)
    assert q["both_correct"] + q["loss"] == round(recs[0]["top1"] * 48)


@pytest.mark.parametrize(
    ("kwargs", "message", "params"),
    [
        ({"flops_budget": 1.5}, "flops_budget=1.5: give a fraction of full depth in (0, 1]", ("flops_budget",)),
        ({"max_drop": 0.0}, "max_drop=0.0: give accuracy points", ("max_drop",)),
        (
            {"flops_budget": 0.8, "max_drop": 0.5},
            "give `flops_budget` or `max_drop`, not both",
            ("flops_budget", "max_drop"),
        ),
        ({"gate_features": "all"}, "gate_features='all': give 'paper' or 'select'", ("gate_features",)),
        ({"placement": "best"}, "placement='best': give 'fixed' or 'auto'", ("placement",)),
        ({"templates": "cifar"}, "templates='cifar': give 'fashion-mnist' or ", ("templates",)),
    ],
)
def test_exit_build_config_refuses_bad_values_in_api_terms(kwargs, message, params):
    from ovclip.errors import OvclipError
    from ovclip.exits.config import ExitBuildConfig

    with pytest.raises(OvclipError) as e:
        ExitBuildConfig(**kwargs)
    assert message in str(e.value) and e.value.params == params


def test_the_objective_reaches_the_threshold_search_typed():
    """flops_budget / max_drop become one typed objective; the search it drives is the one it names."""
    from ovclip.exits.config import ExitBuildConfig
    from ovclip.exits.thresholds import FlopsBudget, MaxDrop, choose_thresholds

    assert ExitBuildConfig().objective == FlopsBudget(0.85)  # the default budget
    assert ExitBuildConfig(flops_budget=0.6).objective == FlopsBudget(0.6)
    assert ExitBuildConfig(max_drop=0.5, confidence=0.9).objective == MaxDrop(0.5, 0.9)
    tr = _trace(2000, 1)
    grids = {e: grid(tr.score[e], 11) for e in tr.exits}
    assert choose_thresholds(tr, grids, FlopsBudget(0.8)) == for_budget(tr, grids, 0.8)
    assert choose_thresholds(tr, grids, MaxDrop(2.0)) == for_max_drop(tr, grids, 0.02)
    assert MaxDrop(2.0).record() == {"max_drop_points": 2.0, "confidence": 0.95}


def test_grid_evaluation_equals_one_by_one():
    from ovclip.exits.thresholds import _drop_bounds, evaluate_grid

    rng = np.random.default_rng(3)
    n, exits = 500, [2, 5, 7]
    score = {e: rng.random(n) for e in exits}
    correct = {e: rng.random(n) < 0.3 + 0.6 * score[e] for e in exits}
    tr = Trace(exits, score, correct, rng.random(n) < 0.6, {2: 20.0, 5: 50.0, 7: 70.0, 8: 80.0}, 8)
    grids = {e: grid(score[e], 7) for e in exits}
    g = evaluate_grid(tr, grids)
    bounds = _drop_bounds(g, 0.95)
    for idx in [(0, 0, 0), (1, 2, 3), (7, 0, 5), (3, 7, 1), (2, 2, 2)]:
        t = {e: grids[e][i] for e, i in zip(exits, idx, strict=True)}
        acc, fl, corr = evaluate(tr, t)
        assert g.correct[idx] == pytest.approx(acc * n)
        assert g.flops[idx] == pytest.approx(fl * n)
        assert bounds[idx] == pytest.approx(drop_upper_bound(corr, tr.full_correct, 0.95))


def test_gate_features_match_a_hand_computation():
    from ovclip.errors import OvclipError

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((7, 4)) * 3
    prev_scores = scores.copy()
    prev_scores[::2] = rng.standard_normal((4, 4))
    emb, prev = rng.standard_normal((2, 7, 5))
    sav = rng.random(7)
    x = gate_feature_values(
        ("confidence", "margin", "sav", "agreement", "same_top1"), scores, sav, emb, prev, prev_scores
    )
    for i in range(7):
        e = [float(np.exp(v)) for v in scores[i]]
        p = sorted((v / sum(e) for v in e), reverse=True)
        cos = sum(a * b for a, b in zip(emb[i], prev[i], strict=True))
        same = float(list(scores[i]).index(max(scores[i])) == list(prev_scores[i]).index(max(prev_scores[i])))
        assert x[i] == pytest.approx([p[0], p[0] - p[1], sav[i], cos, same])
    assert x[1::2, 4].tolist() == [1.0, 1.0, 1.0]  # those rows share their scores with the previous exit
    with pytest.raises(OvclipError, match="unknown gate feature 'entropy'; known: confidence, margin"):
        gate_feature_values(("entropy",), scores, sav)


def _exit_sample(n: int, seed: int):
    """Logits of 10 classes, SAV, embeddings of this and the previous exit, and their scores."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, 10)) * 2.5
    prev_logits = np.where(rng.random((n, 1)) < 0.5, logits, rng.standard_normal((n, 10)) * 2.5)
    emb = rng.standard_normal((n, 8))
    prev = emb + rng.standard_normal((n, 8)) * rng.random((n, 1)) * 2
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    prev /= np.linalg.norm(prev, axis=1, keepdims=True)
    return rng, logits, rng.random(n) * 5, emb, prev, prev_logits


@pytest.mark.parametrize(
    "truth, expected",
    [
        ("confidence", ("confidence",)),  # margin and SAV are noise here: the smallest set ranks best
        ("sav", ("confidence", "margin", "sav")),
        ("agreement", ("confidence", "agreement", "same_top1")),
    ],
)
def test_select_gate_keeps_the_features_that_carry_information(truth, expected):
    from sklearn.metrics import roc_auc_score

    from ovclip.exits.gate_fit import select_gate
    from ovclip.policy.rules import confidence_features

    rng, logits, sav, emb, prev, prev_logits = _exit_sample(4000, 7)
    conf = confidence_features(logits)[0]
    signal = {
        "confidence": 6 * conf,
        "sav": 6 * conf - 1.5 * sav,
        "agreement": 6 * conf + 3 * np.sum(emb * prev, axis=1) + 2 * (logits.argmax(1) == prev_logits.argmax(1)),
    }[truth]
    y = rng.random(len(conf)) < 1 / (1 + np.exp(-(signal - signal.mean())))
    gate, aucs = select_gate(logits, sav, y, emb=emb, prev=prev, prev_scores=prev_logits)
    assert gate.features == expected, aucs
    assert aucs["confidence"] == pytest.approx(roc_auc_score(y, conf))  # one column: its own AUC, no fit
    assert len(aucs) == 5
    ctx = {"emb": emb, "prev": prev, "prev_scores": prev_logits}
    fixed, fixed_aucs = select_gate(logits, sav, y, features=("confidence",), **ctx)
    assert fixed.features == ("confidence",) and fixed_aucs == aucs  # a fixed set still reports every candidate
    first, first_aucs = select_gate(logits, sav, y)  # a first exit has no previous one to agree with
    assert set(first_aucs) == {"confidence", "confidence+margin", "confidence+margin+sav"}


def test_policy_rejects_agreement_features_at_the_first_exit():
    from ovclip.errors import OvclipError
    from ovclip.policy.rules import Gate

    g = Gate(np.ones(2), 0.0, np.zeros(2), np.ones(2), ("confidence", "agreement"))
    with pytest.raises(OvclipError, match=r"gate of the first exit \(2\) cannot use the previous exit"):
        ExitPolicy("gate", [2, 5], {}, {}, {2: g, 5: g})
    old = {"w": [1.0, 0.0, 0.0], "b": 0.0, "mu": [0.0] * 3, "sd": [1.0] * 3}  # manifests before named features
    assert Gate.from_dict(old).features == ("confidence", "margin", "sav")
    with pytest.raises(OvclipError, match="malformed gate: features"):
        Gate.from_dict({**old, "features": ["confidence"]})
