"""A gate split where an exit is always wrong (or always right) still gives a gate: a constant one."""

from __future__ import annotations

import numpy as np
import pytest

from ovclip.exits.gate_fit import fit_logistic, select_gate


@pytest.mark.parametrize("value", [False, True])
def test_one_class_gives_a_constant_gate_at_the_smoothed_rate(value):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    w, b, mu, sd = fit_logistic(x, np.full(40, value))
    assert np.array_equal(w, np.zeros(3))
    rate = (40 * value + 0.5) / 41  # (k + 1/2) / (n + 1)
    assert 1 / (1 + np.exp(-b)) == pytest.approx(rate, rel=1e-12)
    np.testing.assert_allclose(mu, x.mean(0))


def test_select_gate_on_an_exit_that_is_never_right():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(60, 10))
    gate, aucs = select_gate(scores, rng.random(60), np.zeros(60, bool), features=("confidence", "margin", "sav"))
    assert all(a == 0.5 for a in aucs.values())  # no ranking information in one class
    logit = gate.logit(scores, rng.random(60))
    assert np.allclose(logit, np.log(0.5 / 60.5))  # the same low probability for every sample
