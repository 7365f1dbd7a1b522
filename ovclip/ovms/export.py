"""`export_ovms`: a deployment folder as an OpenVINO Model Server model repository.

    REPO/config.json                      model_config_list (OVMS: --config_path REPO/config.json)
    REPO/<prefix>-vision/1/model.xml|bin  the one-graph early-exit model of the label-free policy (full depth
                                          if the folder has none): exits run inside the server
    REPO/<prefix>-vision-classify/1/...   the label policy's graph (+ class_embeddings input), if any
    REPO/<prefix>-text/1/...              the text tower
    REPO/labels/<set>.safetensors         class_embeddings (C, E) unit-norm, logit_scale; labels in the metadata
    REPO/assets/                          tokenizer.json, preprocessor_config.json (what a client needs)
    REPO/ovclip_repository.json           what was exported: models with their inputs and outputs, label sets

Static-shape (NPU) folders cannot hold the compacting graph (its shapes change inside the model), so their
stages and exit heads are exported as separate static models (`<prefix>-vision-stage<k>`, `<prefix>-exit-head-<L>`)
for a client-side cascade, each with its `shape` in config.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openvino as ov

from ovclip import __version__
from ovclip.data.label_sets import LabelSet, builtin_label_set
from ovclip.errors import OvclipError
from ovclip.extras import require
from ovclip.folder import atomic_folder
from ovclip.ovms.config import ModelEntry, plugin_config, repository_config, shape_text
from ovclip.policy.rules import ExitPolicy
from ovclip.progress import Progress, note
from ovclip.runtime import Deployment
from ovclip.runtime.device import core
from ovclip.runtime.exit_graph import exit_graph

REPO_FILE = "ovclip_repository.json"
FORMAT = "ovclip-ovms-repository"
VERSION = "1"
ASSETS = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")
KSERVE_TYPES = {"f32": "FP32", "f16": "FP16", "i64": "INT64", "i32": "INT32", "u8": "UINT8", "boolean": "BOOL"}


def _tensors(outputs) -> list[dict]:
    out = []
    for o in outputs:
        dims = [-1 if d.is_dynamic else d.get_length() for d in o.get_partial_shape()]
        datatype = KSERVE_TYPES[o.get_element_type().get_type_name()]
        out.append({"name": o.get_any_name(), "datatype": datatype, "shape": dims})
    return out


def _write_model(repo: Path, name: str, model: ov.Model | Path) -> dict:
    """REPO/name/1/model.xml|bin from an in-memory model (saved without FP16 compression) or an IR file."""
    target = repo / name / VERSION
    target.mkdir(parents=True)
    if isinstance(model, Path):
        shutil.copyfile(model, target / "model.xml")
        shutil.copyfile(model.with_suffix(".bin"), target / "model.bin")
        model = core().read_model(str(target / "model.xml"))
    else:
        ov.save_model(model, target / "model.xml", compress_to_fp16=False)
    return {"inputs": _tensors(model.inputs), "outputs": _tensors(model.outputs)}


def _vision_graph(dep: Deployment, policy: ExitPolicy | None, name: str) -> ov.Model:
    """The folder's stages (+ the policy's exit heads and rule) joined into one compacting graph, read afresh."""
    read = lambda f: core().read_model(str(dep.folder / f))  # noqa: E731
    stages = [read(s["file"]) for s in dep.vision["stages"]]
    ends = [s["blocks"][1] for s in dep.vision["stages"]]
    heads = {e: read(policy.head_file(e)) for e in policy.exits} if policy is not None else {}
    return exit_graph(stages, ends, heads, policy, int(dep.manifest["embedding_dim"]), name=name)


def _dynamic_models(dep: Deployment, repo: Path, prefix: str) -> dict[str, dict]:
    models = {f"{prefix}-vision": ("vision", dep.embedding_policy)}
    if dep.policy is not None and dep.policy.needs_labels:
        models[f"{prefix}-vision-classify"] = ("vision-classify", dep.policy)
    out = {}
    for name, (kind, policy) in models.items():
        info = _write_model(repo, name, _vision_graph(dep, policy, name))
        rule = None if policy is None else {"rule": policy.rule, "exits": policy.exits}
        out[name] = {"kind": kind, "exit_policy": rule, **info}
    return out


def _static_models(dep: Deployment, repo: Path, prefix: str) -> dict[str, dict]:
    out = {}
    for k, stage in enumerate(dep.vision["stages"]):
        name = f"{prefix}-vision-stage{k}"
        out[name] = {"kind": "vision-stage", "blocks": stage["blocks"]}
        out[name].update(_write_model(repo, name, dep.folder / stage["file"]))
    heads: dict[int, str] = {}
    for policy in (dep.policy, dep.embedding_policy):
        if policy is not None:
            heads.update({e: policy.head_file(e) for e in policy.exits})
    for layer, file in sorted(heads.items()):
        name = f"{prefix}-exit-head-{layer}"
        out[name] = {"kind": "exit-head", "block": layer, **_write_model(repo, name, dep.folder / file)}
    return out


def _write_label_set(dep: Deployment, labels: LabelSet, path: Path) -> dict:
    import numpy as np

    save_file = _safetensors().save_file

    emb = dep.class_embeddings(list(labels.prompt_names), list(labels.templates)).astype(np.float32)
    meta = {k: json.dumps(v) for k, v in labels.to_dict().items()}
    meta["logit_scale"] = repr(dep.logit_scale)
    tensors = {"class_embeddings": np.ascontiguousarray(emb), "logit_scale": np.array(dep.logit_scale, np.float32)}
    save_file(tensors, str(path), metadata=meta)
    return {"file": path.name, "classes": len(labels.labels), "templates": len(labels.templates)}


def _safetensors():
    return require("safetensors.numpy", extra="serve", feature="writing label sets")


def _check_repository_target(out: Path, overwrite: bool) -> Path:
    """Refuse an `out` that exists unless `overwrite` is set and it is an ovclip OVMS repository."""
    if out.exists():
        if not overwrite:
            raise OvclipError(f"{out} already exists; pass `overwrite` to replace it", params="overwrite")
        if not (out / REPO_FILE).is_file():
            raise OvclipError(
                f"{out} is not an ovclip OVMS repository (no {REPO_FILE}), so `overwrite` may not replace it; "
                "choose another `out`",
                params=("overwrite", "out"),
            )
    return out


def export_ovms(
    folder: str | Path,
    out: str | Path,
    *,
    label_sets: list[LabelSet] | None = None,
    prefix: str = "ovclip",
    device: str | None = None,
    hint: str = "throughput",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Write the repository (see the module docstring) and return what `ovclip_repository.json` holds.

    `label_sets`: saved as safetensors (default: the built-in Fashion-MNIST set); `device`: OVMS's
    target_device (default CPU, NPU for static-shape folders); `hint`: the performance hint in plugin_config.
    """
    out = Path(out).absolute()
    _safetensors()  # missing: one line now, not after the models are written
    dep = Deployment(folder, "CPU")  # checks the folder's checksums; computes the label sets' text embeddings
    static = dep.manifest.get("static_batch")
    device = device or ("NPU" if static else "CPU")
    sets = label_sets if label_sets is not None else [builtin_label_set()]
    names = [ls.name or "labels" for ls in sets]
    if len(set(names)) != len(names) or any(not n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise OvclipError(f"label sets {names}: each needs its own name of letters, digits, - and _", params="labels")
    with atomic_folder(_check_repository_target(out, overwrite)) as repo:
        note(progress, f"writing the {'stage' if static else 'one-graph early-exit'} models of {dep.folder}")
        models = _static_models(dep, repo, prefix) if static else _dynamic_models(dep, repo, prefix)
        text = f"{prefix}-text"
        models[text] = {"kind": "text", **_write_model(repo, text, dep.folder / dep.manifest["text"]["file"])}
        (repo / "labels").mkdir()
        written = {}
        for name, labels in zip(names, sets, strict=True):
            written[name] = _write_label_set(dep, labels, repo / "labels" / f"{name}.safetensors")
        (repo / "assets").mkdir()
        for asset in ASSETS:
            if (dep.folder / asset).is_file():
                shutil.copyfile(dep.folder / asset, repo / "assets" / asset)
        entries = [_entry(name, info, device, hint, static) for name, info in models.items()]
        (repo / "config.json").write_text(json.dumps(repository_config(entries), indent=2) + "\n")
        summary = {
            "format": FORMAT,
            "ovclip": __version__,
            "source": {"folder": str(dep.folder), "variant": dep.manifest.variant, "static_batch": static},
            "target_device": device,
            "logit_scale": dep.logit_scale,
            "num_layers": dep.num_layers,
            "models": models,
            "label_sets": written,
        }
        (repo / REPO_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    note(progress, f"wrote {out}: {', '.join(models)}; label sets {', '.join(written)}")
    return summary


def _entry(name: str, info: dict, device: str, hint: str, static) -> ModelEntry:
    shape = {t["name"]: shape_text(t["shape"]) for t in info["inputs"]} if static else {}
    return ModelEntry(name, name, device, plugin_config(device, hint), shape)
