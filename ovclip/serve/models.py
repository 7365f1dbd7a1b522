"""The models a deployment folder offers over the KServe v2 protocol, by the names `ovclip export-ovms` gives
them in an OpenVINO Model Server repository, so a client works against either server unchanged:

    <name>-vision            pixel_values FP32 (N, 3, S, S) -> image_embeds FP32 (N, E) L2-normalised,
                             exit_layer INT32 (N,); the folder's label-free exit policy (or full depth)
    <name>-vision-classify   pixel_values, class_embeddings FP32 (C, E) pre-scaled by logit_scale -> the same
                             outputs; the folder's label policy (only where it has one that reads labels)
    <name>-text              input_ids INT64 (N, context) -> text_embeds FP32 (N, E), as the text IR returns
                             them (not normalised)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ovclip.serve.kserve import ModelSpec, TensorSpec


@dataclass(frozen=True)
class V2Model:
    spec: ModelSpec
    kind: str  # "vision", "vision-classify", "text"

    @staticmethod
    def run_text(dep, ids: np.ndarray) -> np.ndarray:
        return dep.infer(dep.manifest["text"]["file"], np.ascontiguousarray(ids, dtype=np.int64))[0]


def model_specs(manifest, prefix: str, *, labels_policy: bool) -> dict[str, tuple[ModelSpec, str]]:
    """{name: (spec, kind)} for a folder's manifest; `labels_policy`: it has an exit policy that reads labels."""
    v = manifest["vision"]
    size, emb = v["image_size"], int(manifest["embedding_dim"])
    batch = -1  # the server batches dynamically, also for static-batch (NPU) folders
    pixels = TensorSpec("pixel_values", "FP32", (batch, 3, size, size))
    outputs = (TensorSpec("image_embeds", "FP32", (batch, emb)), TensorSpec("exit_layer", "INT32", (batch,)))
    out = {f"{prefix}-vision": (ModelSpec(f"{prefix}-vision", (pixels,), outputs), "vision")}
    if labels_policy:
        cls = TensorSpec("class_embeddings", "FP32", (-1, emb))
        name = f"{prefix}-vision-classify"
        out[name] = (ModelSpec(name, (pixels, cls), outputs), "vision-classify")
    ctx = int(manifest["text"]["context_length"])
    text = ModelSpec(
        f"{prefix}-text",
        (TensorSpec("input_ids", "INT64", (batch, ctx)),),
        (TensorSpec("text_embeds", "FP32", (batch, emb)),),
    )
    out[text.name] = (text, "text")
    return out


def v2_models(dep, prefix: str) -> dict[str, V2Model]:
    """The v2 models a loaded `Deployment` serves."""
    labels_policy = dep.policy is not None and dep.policy.needs_labels
    specs = model_specs(dep.manifest, prefix, labels_policy=labels_policy)
    return {name: V2Model(spec, kind) for name, (spec, kind) in specs.items()}
