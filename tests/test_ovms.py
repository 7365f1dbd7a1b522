"""`ovclip export-ovms`: every IR of the repository loads in OpenVINO with the shapes the repository declares and
gives the `Deployment`'s embeddings and exit blocks on real Fashion-MNIST images; config.json is checked against
OpenVINO Model Server's config schema; the label sets' safetensors hold the deployment's text embeddings."""

from __future__ import annotations

import io
import json

import numpy as np
import openvino as ov
import pytest
from click.testing import CliRunner
from PIL import Image
from serve_folder import early_exit_folder, fashion_pngs

from ovclip.cli import main
from ovclip.data.label_sets import builtin_label_set, make_label_set
from ovclip.errors import OvclipError
from ovclip.ovms import REPO_FILE, export_ovms
from ovclip.runtime import Deployment

jsonschema = pytest.importorskip("jsonschema")

# The model_config_list part of OVMS's config schema, written out from openvinotoolkit/model_server
# src/schema.cpp (MODELS_CONFIG_SCHEMA): what a model entry may hold, with the JSON types the schema accepts.
OVMS_SCHEMA = {
    "type": "object",
    "required": ["model_config_list"],
    "properties": {
        "model_config_list": {"type": "array", "items": {"$ref": "#/definitions/model_config"}},
        "pipeline_config_list": {"type": "array"},
        "custom_loader_config_list": {"type": "array"},
        "custom_node_library_config_list": {"type": "array"},
    },
    "additionalProperties": False,
    "definitions": {
        "model_config": {
            "type": "object",
            "required": ["config"],
            "properties": {
                "config": {
                    "type": "object",
                    "required": ["name", "base_path"],
                    "properties": {
                        "name": {"type": "string"},
                        "base_path": {"type": "string"},
                        "batch_size": {"type": ["integer", "string"], "minimum": 0},
                        "model_version_policy": {"type": "object"},
                        "shape": {"type": ["object", "string"]},
                        "nireq": {"type": "integer", "minimum": 0},
                        "target_device": {"type": "string"},
                        "plugin_config": {"type": "object"},
                        "stateful": {"type": "boolean"},
                        "idle_sequence_cleanup": {"type": "boolean"},
                        "low_latency_transformation": {"type": "boolean"},
                        "max_sequence_number": {"type": "integer", "minimum": 0},
                        "custom_loader_options": {"type": "object"},
                    },
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        }
    },
}
CUSTOM = make_label_set(["shoe", "shirt", "handbag"], ["a photo of a {}.", "a {}."], name="shop")


@pytest.fixture(scope="module")
def folder(fp32_folder, tmp_path_factory):
    return early_exit_folder(fp32_folder, tmp_path_factory)


@pytest.fixture(scope="module")
def repo(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo") / "models"
    export_ovms(folder, out, label_sets=[builtin_label_set(), CUSTOM])
    return out


@pytest.fixture(scope="module")
def dep(folder):
    return Deployment(folder)


@pytest.fixture(scope="module")
def pixels(dep):
    return dep.preprocess([Image.open(io.BytesIO(b)).convert("RGB") for b in fashion_pngs(24, start=100)])


def _config(repo) -> dict:
    return json.loads((repo / "config.json").read_text())


def _compiled(repo, entry: dict) -> tuple[ov.Model, ov.CompiledModel]:
    """Read a model the way OVMS resolves it (base_path relative to config.json, version folder) and compile it
    on CPU with its plugin_config."""
    files = sorted((repo / entry["base_path"] / "1").glob("*.xml"))
    assert len(files) == 1, files
    core = ov.Core()
    model = core.read_model(files[0])
    return model, core.compile_model(model, "CPU", entry["plugin_config"])


def _declared(model: ov.Model) -> list[dict]:
    return [
        {"name": i.get_any_name(), "shape": [-1 if d.is_dynamic else d.get_length() for d in i.get_partial_shape()]}
        for i in model.inputs
    ]


def test_config_json_follows_the_ovms_schema(repo):
    config = _config(repo)
    jsonschema.validate(config, OVMS_SCHEMA)
    entries = [m["config"] for m in config["model_config_list"]]
    assert [e["name"] for e in entries] == ["ovclip-vision", "ovclip-vision-classify", "ovclip-text"]
    for e in entries:
        assert e["target_device"] == "CPU" and e["plugin_config"]["PERFORMANCE_HINT"] == "THROUGHPUT"
        assert (repo / e["base_path"] / "1" / "model.xml").is_file() and (
            repo / e["base_path"] / "1" / "model.bin"
        ).is_file()
        assert "shape" not in e  # dynamic batch: the IR's own shapes
    with pytest.raises(jsonschema.ValidationError):  # the schema check is not vacuous: OVMS refuses unknown keys
        bad = json.loads(json.dumps(config))
        bad["model_config_list"][0]["config"]["precision"] = "FP32"
        jsonschema.validate(bad, OVMS_SCHEMA)


def test_each_ir_loads_with_the_declared_shapes_and_gives_the_deployments_outputs(repo, dep, pixels):
    summary = json.loads((repo / REPO_FILE).read_text())
    fm = builtin_label_set()
    cls = dep.class_embeddings(list(fm.prompt_names), list(fm.templates))
    entries = {m["config"]["name"]: m["config"] for m in _config(repo)["model_config_list"]}
    for name, entry in entries.items():
        model, compiled = _compiled(repo, entry)
        declared = summary["models"][name]["inputs"]
        assert _declared(model) == [{"name": t["name"], "shape": t["shape"]} for t in declared], name
        if name == "ovclip-text":
            ids = dep.tokenizer(["a photo of a bag.", "a coat"])
            out = compiled({"input_ids": ids})["text_embeds"]
            out = out / np.linalg.norm(out, axis=1, keepdims=True)
            np.testing.assert_allclose(out, dep.encode_text(["a photo of a bag.", "a coat"]), atol=1e-5)
            continue
        inputs = {"pixel_values": pixels}
        if name == "ovclip-vision-classify":
            inputs["class_embeddings"] = (dep.logit_scale * cls).astype(np.float32)
            ref = dep.run_vision(pixels, cls)  # the label policy (confidence rule)
        else:
            ref = dep.run_vision(pixels)  # the label-free policy (agreement rule)
        res = compiled(inputs)
        np.testing.assert_array_equal(res["exit_layer"], ref.exit_layer)
        np.testing.assert_allclose(res["image_embeds"], ref.embeddings, atol=1e-5)
        assert len(set(ref.exit_layer.tolist())) >= 2, (name, ref.exit_layer)  # exits happen inside the IR


def test_label_sets_are_the_deployments_text_embeddings(repo, dep):
    from safetensors import safe_open

    for labels in (builtin_label_set(), CUSTOM):
        with safe_open(str(repo / "labels" / f"{labels.name}.safetensors"), "np") as f:
            meta = f.metadata()
            emb, scale = f.get_tensor("class_embeddings"), f.get_tensor("logit_scale")
        assert json.loads(meta["labels"]) == list(labels.labels)
        assert json.loads(meta["templates"]) == list(labels.templates)
        np.testing.assert_allclose(emb, dep.class_embeddings(list(labels.prompt_names), list(labels.templates)))
        assert float(scale) == pytest.approx(dep.logit_scale, rel=1e-7)


def test_static_folder_exports_its_stages_with_their_shapes(cli_export, tmp_path):
    """The NPU-style folder (static batch 2, unsplit): `ovclip export-ovms` writes the stage with its shape."""
    assert cli_export.exit_code == 0, cli_export.output
    out = tmp_path / "npu-repo"
    result = CliRunner().invoke(main, ["export-ovms", str(cli_export.folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "--config_path /models/config.json" in result.output
    config = _config(out)
    jsonschema.validate(config, OVMS_SCHEMA)
    entries = {m["config"]["name"]: m["config"] for m in config["model_config_list"]}
    assert set(entries) == {"ovclip-vision-stage0", "ovclip-text"}
    stage = entries["ovclip-vision-stage0"]
    assert stage["target_device"] == "NPU" and stage["shape"] == {"pixel_values": "(2,3,64,64)"}
    dep = Deployment(cli_export.folder, runtime="stages")
    pixels = dep.preprocess([Image.open(io.BytesIO(b)).convert("RGB") for b in fashion_pngs(2)])
    stage["plugin_config"] = {"INFERENCE_PRECISION_HINT": "f32"}  # run it here on CPU
    model, compiled = _compiled(out, stage)
    assert _declared(model) == [{"name": "pixel_values", "shape": [2, 3, 64, 64]}]
    emb = compiled({"pixel_values": pixels})["image_embeds"]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, dep.run_vision(pixels).embeddings, atol=1e-5)


def test_an_existing_folder_is_refused_unless_it_is_a_repository_and_overwrite_is_given(folder, tmp_path):
    out = tmp_path / "r"
    export_ovms(folder, out, label_sets=[CUSTOM], prefix="clip")
    with pytest.raises(OvclipError, match="already exists; pass `overwrite`"):
        export_ovms(folder, out)
    with pytest.raises(OvclipError, match="is not an ovclip OVMS repository"):
        export_ovms(folder, folder, overwrite=True)
    summary = export_ovms(folder, out, overwrite=True)
    assert sorted(summary["models"]) == ["ovclip-text", "ovclip-vision", "ovclip-vision-classify"]
    assert sorted(p.name for p in out.iterdir()) == [
        "assets",
        "config.json",
        "labels",
        "ovclip-text",
        "ovclip-vision",
        "ovclip-vision-classify",
        REPO_FILE,
    ]
    assert [p.name for p in (out / "labels").iterdir()] == ["fashion-mnist.safetensors"]
    assert not list(tmp_path.glob(".r.ovclip-tmp-*"))
