"""ovclip analyze: IR surgery reads every block's output, the per-block table/JSON/plot, the folder checks.

The reference for the surgery is independent of ovclip: the tiny transformers `CLIPModel` the test builds,
run with `output_hidden_states=True` on real photos (scikit-image; Fashion-MNIST from the package).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
from click.testing import CliRunner
from conftest import build_tiny_model

from ovclip.analyze import BlockTaps, find_block_outputs
from ovclip.analyze.measure import measure_rescue, select_images
from ovclip.analyze.run import analyze_folders
from ovclip.cli.analyze import analyze
from ovclip.errors import OvclipError
from ovclip.policy.inr import inr, nsr
from ovclip.preprocess import PreprocessConfig, preprocess

LAYERS, WIDTH, TOKENS = 4, 64, 5
ROW_KEYS = {
    "block",
    "stage",
    "nsr_patch_mean",
    "nsr_cls",
    "nsr_all_tokens",
    "inr_patch_mean",
    "inr_cls",
    "mse",
    "cos_cls",
    "cos_patch_mean",
    "max_abs_fp32",
    "max_abs_int8",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny model saved with save_pretrained, exported FP32 (split after block 2) and NNCF INT8."""
    from ovclip.checkpoint import load_checkpoint
    from ovclip.data.datasets import builtin_calibration
    from ovclip.export import ExportOptions, export_deployment
    from ovclip.quantize import QuantizationConfig
    from ovclip.quantize.pipeline import quantize_deployment

    root = tmp_path_factory.mktemp("analyze")
    model = build_tiny_model()  # every parameter random: bias and LayerNorm-affine Adds are all there
    model.save_pretrained(root / "hf")
    ckpt = load_checkpoint(str(root / "hf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_deployment(ckpt, root / "fp32", ExportOptions(exits="2"))
        calib = builtin_calibration().subset(np.arange(32))
        quantize_deployment(
            ckpt,
            root / "int8",
            calib,
            QuantizationConfig(subset_size=16, smooth_quant_alpha=None),
            exits="2",
            early_exit=None,
        )
    return SimpleNamespace(root=root, model=model, fp32=root / "fp32", int8=root / "int8")


def _photos() -> list:
    from PIL import Image

    try:
        from skimage import data

        arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    except ImportError:  # test extra missing: still real images, from the package's Fashion-MNIST
        from ovclip.data.datasets import builtin_eval

        arrays = list(builtin_eval().gray[:4])
    return [Image.fromarray(a) for a in arrays]


def _copy(src: Path, dst: Path, **changes) -> Path:
    """A copy of a deployment folder with manifest fields changed (the manifest is not in its own hash list)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for path, value in changes.items():
        node = m
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


# --- IR surgery ------------------------------------------------------------------------------------


def test_block_outputs_equal_transformers_hidden_states(folders):
    import torch

    px = np.stack([preprocess(im, PreprocessConfig(size=64)) for im in _photos()])
    with torch.no_grad():
        ref = folders.model.vision_model(pixel_values=torch.from_numpy(px), output_hidden_states=True).hidden_states
    assert len(ref) == LAYERS + 1
    z = BlockTaps(folders.fp32)(px)
    assert len(z) == LAYERS + 1
    for layer, (ours, theirs) in enumerate(zip(z, ref, strict=True)):
        assert ours.shape == (len(px), TOKENS, WIDTH), layer
        diff = float(np.abs(ours - theirs.numpy()).max())
        assert diff < 1e-4, f"block {layer}: max abs diff {diff}"
    # The blocks really differ from one another (not one tensor tapped five times).
    assert min(float(np.abs(z[i + 1] - z[i]).max()) for i in range(LAYERS)) > 1e-2


def test_int8_block_outputs_carry_8_bit_noise_only(folders):
    """Every INT8 block output against transformers' FP32 hidden states (the independent reference): the relative
    error of 8-bit activations and weights, measured 1.7 % (embeddings) to 2.4 % (block 4) here, bounded at 4 %
    and every token's cosine above 0.998 — an INT8 off by a 5 % scale anywhere fails — and above 0.2 %, far from
    the FP32 IR's ~1e-7, so the folder really is quantized."""
    import torch

    px = np.stack([preprocess(im, PreprocessConfig(size=64)) for im in _photos()])
    with torch.no_grad():
        ref = folders.model.vision_model(pixel_values=torch.from_numpy(px), output_hidden_states=True).hidden_states
    z8 = BlockTaps(folders.int8)(px)
    stage0 = ov.Core().read_model(folders.int8 / "vision_stage0.xml")
    assert any(op.get_type_name() == "FakeQuantize" for op in stage0.get_ops())
    for layer, (ours, theirs) in enumerate(zip(z8, ref, strict=True)):
        want = theirs.numpy()
        rel = float(np.linalg.norm(ours - want) / np.linalg.norm(want))
        assert 2e-3 < rel < 0.04, f"block {layer}: relative error {rel:.4f}"
        worst = float(np.abs(ours - want).max() / np.abs(want).max())
        assert worst < 0.05, f"block {layer}: largest deviation {worst:.4f} of max |a|"
        cos = np.sum(ours * want, -1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(want, axis=-1))
        assert float(cos.min()) > 0.998, f"block {layer}: a token's cosine to FP32 is {float(cos.min()):.5f}"


def test_surgery_refuses_a_graph_without_residual_blocks():
    x = ops.parameter([-1, TOKENS, WIDTH], ov.Type.f32)
    y = ops.add(ops.relu(x), ops.constant(np.ones((1, 1, WIDTH), np.float32)))
    model = ov.Model([y], [x])
    with pytest.raises(OvclipError, match="found 0 residual Add nodes for 2 transformer blocks"):
        find_block_outputs(model, 2, TOKENS, WIDTH, where="toy")


# --- the analysis ----------------------------------------------------------------------------------


def test_analyze_cli_json_table_and_plot(folders, tmp_path):
    out_json, out_png = tmp_path / "a.json", tmp_path / "a.png"
    res = CliRunner().invoke(
        analyze,
        ["--fp32", str(folders.fp32), "--int8", str(folders.int8), "--images", "24", "--batch", "10"]
        + ["--json", str(out_json), "--plot", str(out_png)],
    )
    assert res.exit_code == 0, res.output
    r = json.loads(out_json.read_text())
    assert [row["block"] for row in r["blocks"]] == [1, 2, 3, 4]
    for row in r["blocks"]:
        assert set(row) == ROW_KEYS
        assert all(np.isfinite(row[k]) for k in ROW_KEYS - {"block", "stage"})
        assert row["mse"] > 0 and row["nsr_patch_mean"] > 0 and row["cos_cls"] <= 1.0 + 1e-9
    assert [row["stage"] for row in r["blocks"]] == [0, 0, 1, 1]
    assert r["images"]["count"] == 24 and r["trained"] is True and r["note"] is None
    assert r["embeddings"]["block"] == 0 and r["embeddings"]["inr_cls"] is None  # CLS at block 0: same every image
    assert r["rescue"] is None
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "NSR mean %" in res.output and "CLS token" in res.output


def test_analyze_numbers_recomputed_from_the_taps(folders):
    """The JSON rows are the Eq. 1 / Eq. 5 formulas applied to the tapped activations, with patch-mean = the
    mean over tokens 1.. (CLS excluded) — recomputed here from BlockTaps on the same images."""
    from ovclip.data.datasets import builtin_eval

    r = analyze_folders(folders.fp32, folders.int8, data="builtin", images=20, batch=7)
    data = builtin_eval()
    idx = select_images(len(data), 20)
    px = data.pixels(idx, PreprocessConfig.load(folders.fp32 / "preprocessor_config.json"))
    z32, z8 = BlockTaps(folders.fp32)(px), BlockTaps(folders.int8)(px)
    for L in (1, 3):
        row = r["blocks"][L - 1]
        mean = [z[:, 1:, :].mean(1) for z in (z32[L - 1], z32[L], z8[L])]
        assert row["nsr_patch_mean"] == pytest.approx(nsr(*mean), rel=1e-4)
        assert row["nsr_cls"] == pytest.approx(nsr(z32[L - 1][:, 0], z32[L][:, 0], z8[L][:, 0]), rel=1e-4)
        assert row["inr_patch_mean"] == pytest.approx(inr(mean[1], mean[2]), rel=1e-3)
        assert row["mse"] == pytest.approx(float(np.mean((z8[L] - z32[L]) ** 2)), rel=1e-4)
        assert row["max_abs_int8"] == pytest.approx(float(np.abs(z8[L]).max()), rel=1e-6)
        cos = np.sum(z32[L][:, 0] * z8[L][:, 0], 1) / np.linalg.norm(z32[L][:, 0], axis=1)
        cos /= np.linalg.norm(z8[L][:, 0], axis=1)
        assert row["cos_cls"] == pytest.approx(float(cos.mean()), rel=1e-5)


def _error_line(args) -> str:
    res = CliRunner().invoke(analyze, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_mismatched_folders_are_refused_with_one_line(folders, tmp_path):
    other = _copy(folders.int8, tmp_path / "other", source__spec="/elsewhere/another-clip")
    assert "different checkpoints" in _error_line(["--fp32", folders.fp32, "--int8", other])
    wider = _copy(folders.int8, tmp_path / "wider", vision__hidden_size=128)
    assert "different vision towers" in _error_line(["--fp32", folders.fp32, "--int8", wider])
    retrained = _copy(folders.int8, tmp_path / "retrained", logit_scale=3.0)
    assert "logit scale" in _error_line(["--fp32", folders.fp32, "--int8", retrained])
    assert "is a fp32 folder" in _error_line(["--fp32", folders.fp32, "--int8", folders.fp32])
    assert "is a int8 folder" in _error_line(["--fp32", folders.int8, "--int8", folders.int8])
    assert "no exit_policy" in _error_line(["--fp32", folders.fp32, "--int8", folders.int8, "--ee", folders.int8])
    assert "at least 2 images" in _error_line(["--fp32", folders.fp32, "--int8", folders.int8, "--images", "1"])


def test_random_weights_are_labelled(folders, tmp_path):
    f32 = _copy(folders.fp32, tmp_path / "f32", source__trained=False)
    i8 = _copy(folders.int8, tmp_path / "i8", source__trained=False)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        analyze, ["--fp32", str(f32), "--int8", str(i8), "--images", "8", "--json", str(out)], terminal_width=200
    )
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["trained"] is False and "random weights" in r["note"]
    assert "RANDOM WEIGHTS" in res.output


def test_rescue_table_counts_quadrants_from_both_runs():
    """EE right/full right per sample, from run_vision with and without early exit (a stand-in deployment)."""

    class FakeDeployment:
        folder, num_layers = Path("ee"), 4
        policy = SimpleNamespace(rule="gate", exits=[2], thresholds={2: 0.5})

        def run_vision(self, px, class_embeddings, *, early_exit):
            n = len(px)
            # early exit predicts class 1 for every sample and leaves after block 2 on even rows;
            # full depth predicts class 0 for all.
            cls = 1 if early_exit else 0
            scores = np.zeros((n, 2))
            scores[:, cls] = 1.0
            layer = np.where(np.arange(n) % 2 == 0, 2, 4) if early_exit else np.full(n, 4)
            return SimpleNamespace(scores=scores, exit_layer=layer)

    labels = np.array([1, 1, 0, 1, 0])
    px = np.zeros((5, 3, 2, 2), np.float32)
    r = measure_rescue(FakeDeployment(), [(px[:3], labels[:3]), (px[3:], labels[3:])], np.eye(2))
    q = r["quadrants"]
    assert (q["both_correct"], q["rescue"], q["loss"], q["both_wrong"]) == (0, 3, 2, 0)
    assert q["net"] == 1 and q["net_points"] == pytest.approx(20.0)
    assert r["top1_early_exit"] == pytest.approx(0.6) and r["top1_full_depth"] == pytest.approx(0.4)
    assert r["exit_histogram"] == {"2": 3, "4": 2}  # rows 0, 2 (batch 1) and 3 (batch 2, row 0)


def test_analyze_runs_without_torch(folders, tmp_path):
    """The runtime promise: the command imports only openvino/numpy/click/rich/matplotlib (+ ovclip)."""
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'nncf'): sys.modules[m] = None\n"
        "from ovclip.cli.analyze import analyze\n"
        "from ovclip.devices import describe_devices\n"
        "describe_devices()\n"
        f"analyze.main(['--fp32', {str(folders.fp32)!r}, '--int8', {str(folders.int8)!r}, '--images', '4',"
        f" '--plot', {str(tmp_path / 'p.png')!r}], standalone_mode=False)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "p.png").exists()
