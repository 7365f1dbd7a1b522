"""Choosing the exit rule by cross-fitting on calibration data (`--exit-rule auto`): synthetic head outputs whose
informative feature is known, so the better rule is known; out-of-fold decisions checked against hand refits."""

from __future__ import annotations

import numpy as np
import pytest

from ovclip.exits.calibrate import ExitOutputs
from ovclip.exits.rule_select import (
    CANDIDATES,
    CrossFit,
    Pool,
    choose_rule,
    cross_fit,
    fit_rule,
    folds_of,
    pick,
    significance_z,
)
from ovclip.exits.thresholds import FlopsBudget
from ovclip.policy.cascade import exit_layers

LAYERS, N_LAYERS, CLASSES, EMB = [2, 4], 6, 4, 6
FLOPS = {2: 2.0, 4: 4.0, 6: 6.0}
BUDGETS = (0.9, 0.8, 0.7)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic(signal: str, n: int = 1800, seed: int = 0) -> ExitOutputs:
    """Head outputs where only `signal` tells whether an exit is right: "sav" (the paper gate's SAV; confidence
    is noise), "confidence" (the top-1 probability; SAV and agreement are noise) or "agreement" (the cosine
    between the two exits' embeddings; confidence and SAV are noise)."""
    rng = np.random.default_rng(seed)
    scores, sav, emb, correct = {}, {}, {}, {}
    for j, L in enumerate(LAYERS):
        z = rng.standard_normal(n)  # the latent that decides correctness
        correct[L] = z + 0.4 * rng.standard_normal(n) > -0.3
        s = rng.standard_normal((n, CLASSES))
        if signal == "confidence":
            s[:, 0] = 3 * z + 3
        scores[L] = s
        sav[L] = z if signal == "sav" else rng.standard_normal(n)
        e = _unit(rng.standard_normal((n, EMB)))
        if j and signal == "agreement":  # cosine to the previous exit rises with z
            prev = emb[LAYERS[j - 1]]
            c = 1 / (1 + np.exp(-z))
            orth = _unit(e - np.sum(e * prev, 1, keepdims=True) * prev)
            e = c[:, None] * prev + np.sqrt(1 - c**2)[:, None] * orth
        emb[L] = e
    full = rng.random(n) < 0.8
    return ExitOutputs(emb, scores, correct, sav, full)


def pool_of(signal: str, **kw) -> Pool:
    return Pool(synthetic(signal, **kw), LAYERS, FLOPS, N_LAYERS)


def hand_correct(out: ExitOutputs, idx: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Right or wrong where each image left (`at`: block, 6 = full depth), one image at a time."""
    return np.array([out.full_correct[i] if L == N_LAYERS else out.correct[L][i] for i, L in zip(idx, at, strict=True)])


def test_folds_partition_the_pool():
    idx = np.arange(3, 1000, 2)
    folds = folds_of(idx, 5, seed=1)
    assert len(folds) == 5 and max(map(len, folds)) - min(map(len, folds)) <= 1
    assert np.array_equal(np.sort(np.concatenate(folds)), idx)


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_every_image_gets_one_out_of_fold_exit_from_the_other_folds(candidate):
    pool = pool_of("sav", n=900)
    idx = np.arange(300, 900)  # 0..299: the heads' images, never read
    objectives = [FlopsBudget(b) for b in BUDGETS]
    cf = cross_fit(pool, candidate, idx, objectives, k=3, seed=7)
    assert cf.exit_at.shape == (len(objectives), len(idx)) and set(np.unique(cf.exit_at)) <= {2, 4, 6}
    # each fold by hand: gates and thresholds fitted on the other two folds decide its images
    folds = folds_of(idx, 3, seed=7)
    pos = {int(v): i for i, v in enumerate(idx)}
    for f, held in enumerate(folds):
        fit = fit_rule(pool, candidate, np.concatenate([folds[g] for g in range(3) if g != f]), objectives)
        tr = pool.trace(candidate, held, fit.gates)
        for o, t in enumerate(fit.thresholds):
            assert np.array_equal(cf.exit_at[o, [pos[int(v)] for v in held]], exit_layers(tr, t))
    # correctness and FLOPs follow each image's own exit
    for o in range(len(objectives)):
        assert np.array_equal(cf.correct[o], hand_correct(pool.out, idx, cf.exit_at[o]))
        assert np.allclose(cf.flops[o], [FLOPS[int(L)] for L in cf.exit_at[o]])


def test_an_images_own_label_never_decides_its_exit():
    """Flipping the correctness of the images of one fold leaves their out-of-fold exits as they were."""
    pool = pool_of("sav", n=900)
    idx, objectives = np.arange(900), [FlopsBudget(0.8)]
    before = cross_fit(pool, "paper", idx, objectives, k=3, seed=2)
    held = folds_of(idx, 3, seed=2)[0]
    out = pool.out
    flipped = {L: c.copy() for L, c in out.correct.items()}
    for L in LAYERS:
        flipped[L][held] = ~flipped[L][held]
    pool2 = Pool(ExitOutputs(out.embeddings, out.scores, flipped, out.sav, out.full_correct), LAYERS, FLOPS, N_LAYERS)
    after = cross_fit(pool2, "paper", idx, objectives, k=3, seed=2)
    assert np.array_equal(before.exit_at[:, held], after.exit_at[:, held])
    rest = np.setdiff1d(idx, held)
    assert not np.array_equal(before.exit_at[:, rest], after.exit_at[:, rest])  # the others were refitted


@pytest.mark.parametrize(
    ("signal", "better", "worse"),
    [
        ("sav", {"paper", "select"}, {"confidence", "label-free"}),
        ("agreement", {"label-free", "select"}, {"confidence", "paper"}),
        ("confidence", {"confidence", "paper", "select"}, {"label-free"}),
    ],
)
def test_auto_picks_a_rule_that_reads_the_informative_feature(signal, better, worse):
    pool = pool_of(signal)
    head_split = np.arange(0, 1800, 3)
    choice = choose_rule(pool, "auto", head_split, FlopsBudget(0.8), budgets=BUDGETS, folds=5, seed=0)
    rec = choice.record
    assert rec["chosen"] in better
    assert all(p["rule"] in better for p in rec["pick_per_budget"])
    # the margin is real: out of fold the chosen rule is clearly ahead of every rule blind to the signal
    for b, row in enumerate(rec["pick_per_budget"]):
        best = rec["candidates"][row["rule"]][b]["top1"]
        assert all(best > rec["candidates"][w][b]["top1"] + 0.01 for w in worse)
    assert choice.policy.rule == {"paper": "gate", "select": "gate", "confidence": "confidence"}.get(
        rec["chosen"], "agreement"
    )
    assert rec["heads_trained_on"] == 600 and rec["fitted_on"] == 1200


def test_the_record_holds_every_candidates_cross_fitted_pareto_points():
    pool = pool_of("sav", n=1200)
    head_split = np.arange(0, 1200, 2)
    choice = choose_rule(pool, "auto", head_split, FlopsBudget(0.85), budgets=BUDGETS, folds=4, seed=3)
    rec = choice.record
    assert set(rec["candidates"]) == set(CANDIDATES) and rec["folds"] == 4
    idx = np.arange(1, 1200, 2)
    objectives = [*(FlopsBudget(b) for b in BUDGETS), FlopsBudget(0.85)]
    for c in CANDIDATES:
        cf = cross_fit(pool, c, idx, objectives, k=4, seed=3)  # the same folds, recomputed independently
        points = rec["candidates"][c]
        assert [p["budget"] for p in points] == list(BUDGETS)
        for o, p in enumerate(points):
            at = cf.exit_at[o]
            assert p["top1"] == pytest.approx(hand_correct(pool.out, idx, at).mean())
            assert p["flops_saving"] == pytest.approx(1 - np.mean([FLOPS[int(L)] for L in at]) / FLOPS[6])
        assert rec["objective"][c]["top1"] == pytest.approx(hand_correct(pool.out, idx, cf.exit_at[-1]).mean())
    # the deployed rule: gates and thresholds fitted on every non-head image, meeting the budget there
    final = fit_rule(pool, rec["chosen"], idx, [FlopsBudget(0.85)])
    assert choice.policy.thresholds == final.thresholds[0]
    tr = pool.trace(rec["chosen"], idx, final.gates)
    assert np.mean([FLOPS[int(L)] for L in exit_layers(tr, choice.policy.thresholds)]) <= 0.85 * 6 + 1e-9


def test_a_fixed_rule_is_fitted_on_the_whole_pool_without_cross_fitting():
    pool = pool_of("confidence", n=900)
    choice = choose_rule(pool, "confidence", np.arange(300), FlopsBudget(0.8), budgets=BUDGETS)
    assert choice.policy.rule == "confidence" and "candidates" not in choice.record
    assert (
        choice.policy.thresholds == fit_rule(pool, "confidence", np.arange(300, 900), [FlopsBudget(0.8)]).thresholds[0]
    )
    lf = choose_rule(pool, "label-free", np.arange(300), FlopsBudget(0.8), budgets=BUDGETS)
    assert lf.policy.rule == "agreement" and lf.policy.thresholds[2] is None  # no previous exit at the first


def test_paper_and_select_keep_the_gate_paths_policy():
    from ovclip.exits.rule_select import deployed_rule
    from ovclip.policy.rules import ExitPolicy, Gate

    gates = {L: Gate(w=np.ones(3), b=0.5, mu=np.zeros(3), sd=np.ones(3)) for L in LAYERS}
    paper = ExitPolicy("gate", LAYERS, {}, {2: 0.7, 4: None}, gates, {"rules": {"gate": {}}})
    out = synthetic("sav", n=300)
    for mode in ("paper", "select"):
        kept = deployed_rule(paper, mode, out, np.arange(100), ({}, 0, 0), FlopsBudget(0.8), budgets=BUDGETS)
        assert kept.to_dict() | {"info": {}} == paper.to_dict() | {"info": {}}  # same exits, thresholds, gates
        assert kept.info == {**paper.info, "exit_rule": {"mode": mode}}


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_thresholds_for_many_budgets_equal_the_search_one_budget_at_a_time(candidate):
    from ovclip.exits.rule_select import fit_gates, fit_thresholds
    from ovclip.exits.thresholds import MaxDrop, choose_thresholds, grid

    pool = pool_of("sav", n=600)
    idx = np.arange(600)
    tr = pool.trace(candidate, idx, fit_gates(pool, candidate, idx))
    objectives = [FlopsBudget(b) for b in (1.0, 0.9, 0.75, 0.6, 0.4)] + [MaxDrop(2.0)]
    grids = {L: ([None] if candidate == "label-free" and j == 0 else grid(tr.score[L])) for j, L in enumerate(LAYERS)}
    for obj, (t, feasible) in zip(objectives, fit_thresholds(candidate, tr, objectives), strict=True):
        t1, _, fl = choose_thresholds(tr, grids, obj)
        assert t == t1
        assert feasible == (not isinstance(obj, FlopsBudget) or fl <= obj.fraction * 6 + 1e-6)


def _fit(name: str, correct: np.ndarray) -> CrossFit:
    n = len(correct)
    exits, feasible, flops = np.full((1, n), 6), np.ones(1, bool), np.ones((1, n))
    return CrossFit(name, np.arange(n), exits, feasible, correct[None, :], flops, correct)


@pytest.mark.parametrize(
    ("extra_right", "chosen"),
    [
        (10, "confidence"),  # 10 more right of 2,000 (+0.5 points) with 60 images in disagreement: noise
        (60, "select"),  # 60 more right and none the other way: a real gain
    ],
)
def test_auto_keeps_the_simpler_rule_unless_a_complex_one_is_significantly_better(extra_right, chosen):
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.8
    other = base.copy()
    if extra_right == 10:  # 35 images only select gets right, 25 only confidence does
        wrong, right = np.flatnonzero(~base), np.flatnonzero(base)
        other[wrong[:35]] = True
        other[right[:25]] = False
    else:
        other[np.flatnonzero(~base)[:60]] = True
    fits = {"confidence": _fit("confidence", base), "select": _fit("select", other)}
    assert fits["select"].top1()[0] - fits["confidence"].top1()[0] == pytest.approx(extra_right / 2000)
    d = other.astype(float) - base
    lo = d.mean() - 1.960 * d.std(ddof=1) / np.sqrt(len(d))  # two candidates: one comparison, two-sided 5 %
    assert (lo > 0) == (chosen == "select")
    assert pick(fits, 0, 1.0, FlopsBudget(0.8)) == chosen


def test_the_significance_bar_is_bonferroni_corrected_for_the_comparisons():
    # two-sided 5 % over n - 1 comparisons with the best: Phi^-1(1 - 0.05 / 2 / (n - 1)), from a normal table
    assert significance_z(2) == pytest.approx(1.95996, abs=1e-4)
    assert significance_z(4) == pytest.approx(2.39398, abs=1e-4)
