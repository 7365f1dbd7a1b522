"""Accuracy and noise metrics on hand-made inputs; every expected value is worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ovclip.bench.metrics import exit_histogram, recall_at_k, rescue_quadrants, topk_accuracy
from ovclip.policy.cascade import Trace, evaluate, exit_layers
from ovclip.policy.inr import inr, nsr, prune

# --- topk_accuracy ---------------------------------------------------------------------------------


def test_topk_hand_cases():
    scores = np.array(
        [
            [0.1, 0.7, 0.2],  # order 1, 2, 0
            [0.5, 0.3, 0.9],  # order 2, 0, 1
            [0.3, 0.2, 0.1],  # order 0, 1, 2
            [0.2, 0.6, 0.4],  # order 1, 2, 0
        ]
    )
    labels = np.array([1, 0, 2, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 4)  # only row 0
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 4)  # rows 0 and 1
    assert topk_accuracy(scores, labels, 3) == pytest.approx(1.0)


def test_topk_ties_go_to_the_lower_index():
    scores = np.array([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1], [0.2, 0.9, 0.9]])
    # row 0: tie 0/1 -> 0 ranks first, label 0 right; row 1: label 1 loses the tie; row 2: 1 beats 2.
    assert topk_accuracy(scores, np.array([0, 1, 1]), 1) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, np.array([0, 1, 2]), 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, np.array([0, 1, 2]), 2) == pytest.approx(1.0)


def test_topk_k_beyond_the_classes_and_empty():
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    labels = np.array([0, 1])  # both wrong at k=1
    assert topk_accuracy(scores, labels, 1) == 0.0
    assert topk_accuracy(scores, labels, 5) == 1.0  # k clipped to the 2 classes: everything is in the top 2
    assert math.isnan(topk_accuracy(np.zeros((0, 3)), np.zeros(0, np.int64), 1))


# --- recall_at_k -----------------------------------------------------------------------------------


def test_recall_at_k_on_a_constructed_4x4_similarity():
    # image embeddings = identity, so text @ image.T is exactly the text rows below.
    sims = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # caption 0 -> image 0: nothing higher, rank 0
            [0.8, 0.5, 0.1, 0.0],  # caption 1 -> image 1: 0.8 higher, rank 1
            [0.7, 0.6, 0.4, 0.65],  # caption 2 -> image 2: 0.7, 0.6, 0.65 higher, rank 3
            [0.2, 0.3, 0.3, 0.3],  # caption 3 -> image 3: ties do not count against it, rank 0
        ]
    )
    r = recall_at_k(sims, np.eye(4), np.arange(4), ks=(1, 2, 3, 4))
    assert r == pytest.approx({"R@1": 2 / 4, "R@2": 3 / 4, "R@3": 3 / 4, "R@4": 1.0})


def test_recall_at_k_follows_the_image_index():
    sims = np.array([[0.1, 0.9, 0.0, 0.0], [0.3, 0.2, 0.1, 0.0]])
    # caption 0 describes image 1 (its best, rank 0); caption 1 describes image 2 (0.3, 0.2 higher, rank 2).
    r = recall_at_k(sims, np.eye(4), np.array([1, 2]), ks=(1, 3))
    assert r == pytest.approx({"R@1": 0.5, "R@3": 1.0})


# --- rescue quadrants and exit histogram --------------------------------------------------------------


def test_rescue_quadrants_counts_and_net_points():
    ee = np.array([1, 1, 0, 0, 1, 0, 1], bool)
    full = np.array([1, 0, 1, 0, 0, 0, 1], bool)
    # both: 0, 6; rescue: 1, 4; loss: 2; both wrong: 3, 5.
    q = rescue_quadrants(ee, full)
    assert {k: q[k] for k in ("both_correct", "rescue", "loss", "both_wrong", "n", "net")} == {
        "both_correct": 2,
        "rescue": 2,
        "loss": 1,
        "both_wrong": 2,
        "n": 7,
        "net": 1,
    }
    assert q["net_points"] == pytest.approx(100 / 7)
    # net points = EE accuracy - full accuracy: (4 - 3) / 7.
    assert q["net_points"] == pytest.approx(100 * (ee.mean() - full.mean()))


def test_rescue_quadrants_paper_table_4():
    # The paper's §7 counts rebuilt as vectors: 5162 both, 947 rescue, 710 loss, 3181 both wrong.
    ee = np.array([1] * 5162 + [1] * 947 + [0] * 710 + [0] * 3181, bool)
    full = np.array([1] * 5162 + [0] * 947 + [1] * 710 + [0] * 3181, bool)
    q = rescue_quadrants(ee, full)
    assert (q["rescue"], q["loss"], q["net"], q["n"]) == (947, 710, 237, 10000)
    assert q["net_points"] == pytest.approx(2.37)


def test_rescue_quadrants_empty():
    q = rescue_quadrants(np.zeros(0, bool), np.zeros(0, bool))
    assert q["n"] == 0 and math.isnan(q["net_points"])


def test_exit_histogram():
    layers = np.array([2, 4, 4, 3, 2, 4, 1])
    # exits 2 and 3, full depth 4; a block that is not an exit (1) is not a bin.
    assert exit_histogram(layers, [2, 3], 4) == {"2": 2, "3": 1, "4": 3}
    assert exit_histogram(np.full(3, 12), [8, 10, 11], 12) == {"8": 0, "10": 0, "11": 0, "12": 3}


# --- NSR (Eq. 1), INR (Eq. 5), pruning (Eq. 6) -------------------------------------------------------


def test_nsr_hand_computed():
    prev = np.array([[0.0, 0.0], [1.0, 1.0]])
    fp32 = np.array([[3.0, 4.0], [1.0, 2.0]])
    int8 = np.array([[3.0, 5.0], [1.0, 2.5]])
    # image 0: ||(0, 1)|| / ||(3, 4)|| = 1 / 5 = 0.2; image 1: ||(0, 0.5)|| / ||(0, 1)|| = 0.5; mean 0.35.
    assert nsr(prev, fp32, int8) == pytest.approx(0.35)
    assert nsr(prev, fp32, fp32) == 0.0


def test_inr_hand_computed():
    fp32 = np.array([[1.0, 2.0], [3.0, 4.0]])
    eps = np.array([[0.1, 0.0], [-0.1, 0.2]])
    # signal ||mean||^2 = ||(2, 3)||^2 = 13; noise: var(0.1, -0.1) = 0.01, var(0, 0.2) = 0.01 -> 0.02.
    assert inr(fp32, fp32 + eps) == pytest.approx(13 / 0.02)
    # Only the error's spread across images is noise, not its mean: var(0.5, 0.6) = 0.0025, var(0.5, 0.5) = 0.
    assert inr(fp32, fp32 + np.array([[0.5, 0.5], [0.6, 0.5]])) == pytest.approx(13 / 0.0025)


def test_prune_eq6():
    # mean INR 6.5, kappa 0.5 -> threshold 3.25: layer 9 (2.0) goes, as in the paper.
    assert prune({8: 10.0, 9: 2.0, 10: 8.0, 11: 6.0}) == ([8, 10, 11], [9])
    assert prune({8: 10.0, 9: 2.0, 10: 8.0, 11: 6.0}, kappa=0.2) == ([8, 9, 10, 11], [])


# --- the exit cascade ----------------------------------------------------------------------------------


def _trace() -> Trace:
    return Trace(
        exits=[2, 3],
        score={2: np.array([0.9, 0.1, 0.5, 0.2]), 3: np.array([0.0, 0.8, 0.6, 0.1])},
        correct={2: np.array([1, 0, 0, 1], bool), 3: np.array([0, 1, 1, 0], bool)},
        full_correct=np.array([0, 0, 1, 1], bool),
        flops={2: 2.0, 3: 3.0, 4: 4.0},
        num_layers=4,
    )


def test_cascade_evaluate_hand_trace():
    t = _trace()
    # tau 0.5 at 2, 0.7 at 3: sample 0 leaves at 2 (right, 2 FLOPs); 1 at 3 (right, 3); 2 at 2 (score equal to
    # tau leaves; wrong, 2); 3 runs to the end (right, 4). Accuracy 3/4, FLOPs 11/4.
    acc, flops, correct = evaluate(t, {2: 0.5, 3: 0.7})
    assert exit_layers(t, {2: 0.5, 3: 0.7}).tolist() == [2, 3, 2, 4]
    assert acc == pytest.approx(0.75) and flops == pytest.approx(2.75)
    assert correct.tolist() == [True, True, False, True]
    # Exit 2 switched off: 0 -> full (wrong, 4); 1 -> 3 (right, 3); 2 -> full (right, 4); 3 -> full (right, 4).
    acc, flops, correct = evaluate(t, {2: None, 3: 0.7})
    assert acc == pytest.approx(0.75) and flops == pytest.approx(15 / 4)
    assert correct.tolist() == [False, True, True, True]
    # No exits: the full-depth result.
    acc, flops, correct = evaluate(t, {})
    assert acc == pytest.approx(0.5) and flops == pytest.approx(4.0)
    assert correct.tolist() == t.full_correct.tolist()
    # Everything leaves at the first exit.
    acc, flops, _ = evaluate(t, {2: 0.0, 3: 0.0})
    assert acc == pytest.approx(0.5) and flops == pytest.approx(2.0)
