"""`--exit-rule` / `ExitBuildConfig(exit_rule=)`: the modes, the old `gate_features='select'` spelling, and a real
tiny quantize with the default ("auto") recording every candidate's cross-fitted points and deploying its pick."""

from __future__ import annotations

import numpy as np
import pytest

from ovclip.exits.rule_select import CANDIDATES


@pytest.mark.parametrize(
    ("kwargs", "mode", "gate_features"),
    [
        ({}, "auto", "paper"),
        ({"gate_features": "select"}, "select", "select"),  # the old spelling
        ({"exit_rule": "select"}, "select", "select"),
        ({"exit_rule": "paper"}, "paper", "paper"),
        ({"exit_rule": "label-free"}, "label-free", "paper"),
    ],
)
def test_exit_rule_config(kwargs, mode, gate_features):
    from ovclip.exits.config import ExitBuildConfig

    cfg = ExitBuildConfig(**kwargs)
    assert (cfg.rule_mode, cfg.gate_features) == (mode, gate_features)


@pytest.mark.parametrize(
    ("kwargs", "message", "params"),
    [
        ({"exit_rule": "gate"}, "exit_rule='gate': give 'auto' or 'paper' or", ("exit_rule",)),
        (
            {"exit_rule": "paper", "gate_features": "select"},
            "gate_features='select' is exit_rule='select'; it cannot go with exit_rule='paper'",
            ("gate_features", "exit_rule"),
        ),
    ],
)
def test_exit_rule_config_errors(kwargs, message, params):
    from ovclip.errors import OvclipError
    from ovclip.exits.config import ExitBuildConfig

    with pytest.raises(OvclipError) as e:
        ExitBuildConfig(**kwargs)
    assert message in str(e.value) and tuple(e.value.params) == params


def test_quantize_auto_records_every_candidate_and_deploys_the_pick(tiny_ckpt, tmp_path):
    from ovclip.data.builtin import builtin_calibration, builtin_eval
    from ovclip.exits.config import ExitBuildConfig
    from ovclip.exits.heads import HeadTrainConfig
    from ovclip.exits.rule_select import POLICY_RULE
    from ovclip.quantize import QuantizationConfig
    from ovclip.quantize.pipeline import quantize_deployment
    from ovclip.runtime import Deployment

    calib = builtin_calibration().subset(np.arange(600))
    cfg = ExitBuildConfig(flops_budget=0.9, min_images=300, head=HeadTrainConfig(epochs=3, epoch_candidates=(3,)))
    q = QuantizationConfig(subset_size=16, smooth_quant_alpha=None)
    m = quantize_deployment(tiny_ckpt, tmp_path / "int8", calib, q, exits="1,2,3", early_exit=cfg)
    policy = m["exit_policy"]
    rec = policy["info"]["exit_rule"]
    assert rec["mode"] == "auto" and set(rec["candidates"]) == set(CANDIDATES)
    assert rec["heads_trained_on"] == 300 and rec["fitted_on"] == 300  # the default split: half trains heads
    assert all(len(points) == len(rec["pick_per_budget"]) for points in rec["candidates"].values())
    assert policy["rule"] == POLICY_RULE[rec["chosen"]]
    dep = Deployment(tmp_path / "int8")
    assert dep.policy.rule == policy["rule"] and dep.policy.exits == policy["exits"]
    data = builtin_eval().subset(np.arange(16))
    res = dep.classify(data.pixels(np.arange(16), dep.preprocess_config), data.prompt_names, ["a photo of a {}."])
    assert res.embeddings.shape == (16, 32) and set(np.unique(res.exit_layer)) <= {1, 2, 3, 4}


def test_an_explicit_exit_rule_on_unlabeled_images_is_refused_before_nncf(tmp_path):
    """Class-score rules need labels; an unlabeled folder says so (with the flags' names) before any model work."""
    from click.testing import CliRunner
    from PIL import Image

    from ovclip.cli import main

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (28, 28), (40 * i, 0, 0)).save(flat / f"{i}.png")
    out = tmp_path / "int8"
    r = CliRunner().invoke(main, ["quantize", "--calibration", str(flat), "--exit-rule", "paper", "--out", str(out)])
    assert r.exit_code != 0 and not out.exists()
    assert "--exit-rule 'paper' chooses among class-score rules, which need labelled calibration images" in r.output
    assert "label-free fidelity rule (its bound: --min-fidelity)" in r.output
