"""benchmarks/paper_table.py end to end on random:tiny and a synthetic 1,000-folder ImageNet-layout tree:
every row and column present, accuracy null with the reason, FLOPs as counted by hand, the paper's figures."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovclip.data.imagenet import imagenet_classes

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_table.py"

# random:tiny (ovclip/configs/random-tiny.json): 64 px, 32 px patches -> 4 patches + CLS = 5 tokens, width 64,
# MLP 256, 4 blocks, embedding 32. By hand (1 multiply-add = 2 FLOPs):
#   stem 2 * 4 patches * (3 * 32 * 32) * 64                       = 1,572,864
#   block 2 * (4*5*64^2 + 2*5^2*64 + 2*5*64*256) = 2 * 248,960    =   497,920  (x 4 blocks = 1,991,680)
#   projection 2 * 64 * 32                                        =     4,096
STEM, BLOCK, PROJ = 1_572_864, 497_920, 4_096
FULL = STEM + 4 * BLOCK + PROJ  # 3,568,640
HEAD_1000 = 2 * (64 * 64 + 64 * 32 + 32 * 1000)  # one exit head + its 1,000 class scores: 76,288


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet-like")
    rng = np.random.default_rng(0)
    for w in imagenet_classes()[0]:
        (root / w).mkdir()
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / w / f"{w}_0.png")
    return root


@pytest.fixture(scope="module")
def table(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper-table")
    argv = [str(SCRIPT), "--model", "random:tiny", "--data", str(tree), "--calibration", str(tree)]
    argv += ["--templates", "simple", "--limit", "100", "--smooth-quant", "off", "--subset-size", "64"]
    argv += ["--head-epochs", "10", "--batch", "4", "--pool", "8", "--seconds", "0.2", "--repeats", "1"]
    argv += ["--json", str(out / "paper_table.json"), "--out", str(out / "folders")]
    old = sys.argv, list(sys.path)
    sys.argv = argv
    sys.path.insert(0, str(SCRIPT.parent))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old[0], old[1]
    return json.loads((out / "paper_table.json").read_text()), out, printed.getvalue()


def test_every_row_and_column(table):
    d, _, _ = table
    rows = d["rows"]
    assert list(rows) == ["fp32", "paper-int8", "ovclip-int8", "ovclip-int8-ee"]
    for name, r in rows.items():
        assert r["n_images"] == 100 == d["n_images"]
        assert r["top1"] is None and r["top5"] is None, name
        assert r["accuracy_note"] == "random weights: accuracy is meaningless, speed only"
        assert r["rescue"] is None  # needs correctness, so null with the same reason
        assert r["throughput"] > 0 and len(r["throughput_runs"]) == 1
    assert rows["fp32"]["x_fp32"] == 1.0
    assert d["template_set"] == "imagenet-simple" and d["templates"] == 7
    assert d["trained"] is False and "1,000 images, 1000 classes" in d["data"]
    # q, k, v, out, fc1, fc2 in each of the 4 blocks + the visual projection
    assert d["paper_int8_linear_layers"]["quantized"] == 4 * 6 + 1
    assert d["paper_int8_linear_layers"]["float"] == 0
    assert d["paper"]["ovclip-int8-ee"]["top1"] == 61.16 and d["paper"]["paper-int8"]["top1"] == 58.72


def test_flops_and_exits_as_counted_by_hand(table):
    d, _, _ = table
    rows, exits = d["rows"], d["exit_policy"]["exits"]
    for name in ("fp32", "paper-int8", "ovclip-int8"):
        assert rows[name]["flops_per_image"] == FULL and rows[name]["flops_saving"] == 0.0
    ee = rows["ovclip-int8-ee"]
    share = ee["exit_share"]
    assert set(share) == {*map(str, exits), "full"} and sum(share.values()) == pytest.approx(1.0)

    def cost(layer: int) -> int:  # the heads of every exit passed on the way, each with its class scores
        passed = [e for e in exits if e <= layer and e < 4]
        return STEM + layer * BLOCK + len(passed) * HEAD_1000 + (PROJ if layer == 4 else 0)

    expected = sum(v * cost(4 if k == "full" else int(k)) for k, v in share.items())
    assert ee["flops_per_image"] == pytest.approx(expected, rel=1e-12)
    assert ee["flops_saving"] == pytest.approx(1 - expected / FULL, rel=1e-9)


def test_printed_table_and_folders(table):
    d, out, printed = table
    for header in ("top-1 %", "GFLOP/img", "FLOPs saved %", "exits % (ovclip)", "rescue / loss %", "img/s", "x FP32"):
        assert header in printed
    for label in ("FP32 (OpenVINO IR, f32)", "paper INT8 (torch", "ovclip INT8 (NNCF", "ovclip INT8 + early exit"):
        assert label in printed
    # the paper's published figures beside ovclip's
    for figure in ("58.72", "61.16", "13.38", "L8 10.1 / L10 25.3 / L11 32.1 / full 32.5", "9.5 / 7.1"):
        assert figure in printed
    assert "random weights: accuracy is meaningless, speed only" in printed
    assert (out / "folders" / "fp32" / "manifest.json").is_file()
    m = json.loads((out / "folders" / "int8" / "manifest.json").read_text())
    assert m["exit_policy"]["exits"] == d["exit_policy"]["exits"]
