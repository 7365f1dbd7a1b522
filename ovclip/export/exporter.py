"""`ovclip export`: write a deployment folder of FP32 (or FP16-weight) IR from a CLIP checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import openvino as ov
import torch

from ovclip.errors import OvclipError
from ovclip.export.stages import parse_exits, stage_bounds
from ovclip.export.towers import TextTower, VisionStage
from ovclip.folder import Manifest, staging_folder, write_manifest
from ovclip.tokenizer import write_tokenizer

if TYPE_CHECKING:
    from ovclip.checkpoint import LoadedCheckpoint

Precision = Literal["fp32", "fp16"]  # weights as stored in the IR: fp32, or fp16 (compressed)
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class ExportOptions:
    exits: str | list[int] | None = None  # None: the paper's exits, scaled to the depth
    precision: Precision = "fp32"
    static_batch: int | None = None  # NPU needs static shapes; None keeps the batch dynamic
    overwrite: bool = False


@dataclass(frozen=True)
class VisionGeometry:
    """The vision tower's shapes, read from a checkpoint's config: what the IR inputs, FLOPs counts and exit
    heads are sized by."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    image_size: int
    patch_size: int
    tokens: int  # patch tokens + the class token
    embedding_dim: int

    @classmethod
    def of(cls, clip) -> VisionGeometry:
        vc = clip.config.vision_config
        patches = (vc.image_size // vc.patch_size) ** 2
        return cls(
            num_layers=vc.num_hidden_layers,
            hidden_size=vc.hidden_size,
            intermediate_size=vc.intermediate_size,
            image_size=vc.image_size,
            patch_size=vc.patch_size,
            tokens=patches + 1,
            embedding_dim=clip.config.projection_dim,
        )

    def record(self) -> dict[str, int]:
        """The manifest's `vision` shape fields (also what `ovclip.policy.flops` reads)."""
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "tokens": self.tokens,
        }


def _name(model: ov.Model, input_name: str, output_name: str) -> ov.Model:
    model.inputs[0].get_tensor().set_names({input_name})
    model.outputs[0].get_tensor().set_names({output_name})
    return model


def convert_vision_stage(clip, start: int, end: int, batch: int | None = None) -> ov.Model:
    """One vision stage as an ov.Model (dynamic batch unless `batch`)."""
    geo = VisionGeometry.of(clip)
    stage = VisionStage(clip, start, end).eval()
    b = -1 if batch is None else batch
    if start == 0:
        shape, example, in_name = (
            [b, 3, geo.image_size, geo.image_size],
            torch.zeros(2, 3, geo.image_size, geo.image_size),
            "pixel_values",
        )
    else:
        shape, example, in_name = (
            [b, geo.tokens, geo.hidden_size],
            torch.zeros(2, geo.tokens, geo.hidden_size),
            "hidden_states",
        )
    out_name = "image_embeds" if end == geo.num_layers else "hidden_states_out"
    with torch.no_grad():
        model = ov.convert_model(stage, example_input=example, input=[(ov.PartialShape(shape), ov.Type.f32)])
    return _name(model, in_name, out_name)


def convert_text(clip, batch: int | None = None, context_length: int = 77) -> ov.Model:
    b = -1 if batch is None else batch
    example = torch.zeros(2, context_length, dtype=torch.int64)
    example[:, 0], example[:, 1] = 49406, 49407
    with torch.no_grad():
        model = ov.convert_model(
            TextTower(clip).eval(), example_input=example, input=[(ov.PartialShape([b, context_length]), ov.Type.i64)]
        )
    return _name(model, "input_ids", "text_embeds")


def vision_stage_files(n_stages: int) -> list[str]:
    return [f"vision_stage{i}.xml" for i in range(n_stages)]


def stage_records(bounds: list[tuple[int, int]], num_layers: int) -> list[dict]:
    files = vision_stage_files(len(bounds))
    return [
        {
            "file": f,
            "blocks": [a + 1, b],  # 1-based, inclusive
            "input": "pixel_values" if a == 0 else "hidden_states",
            "output": "image_embeds" if b == num_layers else "hidden_states_out",  # the IR tensor names
        }
        for f, (a, b) in zip(files, bounds, strict=True)
    ]


def base_manifest(ckpt: LoadedCheckpoint, exits: list[int], static_batch: int | None) -> dict:
    clip = ckpt.model
    geo = VisionGeometry.of(clip)
    return {
        "source": {"spec": ckpt.source, "kind": ckpt.kind, "description": ckpt.description, "trained": ckpt.trained},
        "static_batch": static_batch,
        "logit_scale": float(math.exp(float(clip.logit_scale.detach()))),
        "embedding_dim": geo.embedding_dim,
        "vision": {
            **geo.record(),
            "exits": exits,
            "stages": stage_records(stage_bounds(geo.num_layers, exits), geo.num_layers),
        },
        "text": {"file": "text.xml", "context_length": 77},
        "preprocess": ckpt.preprocess.as_dict(),
    }


def write_common(folder: Path, ckpt: LoadedCheckpoint) -> None:
    write_tokenizer(folder, ckpt.tokenizer)
    ckpt.preprocess.save(folder / "preprocessor_config.json")


def export_deployment(ckpt: LoadedCheckpoint, out: str | Path, options: ExportOptions = ExportOptions()) -> Manifest:
    """Write an FP32/FP16 deployment folder for `ckpt` into `out` (atomically)."""
    if options.precision not in PRECISIONS:
        raise OvclipError(f"precision={options.precision!r}: choose one of {', '.join(PRECISIONS)}", params="precision")
    if options.static_batch is not None and options.static_batch < 1:
        raise OvclipError(f"static_batch={options.static_batch}: must be a positive batch size", params="static_batch")
    clip = ckpt.model.eval()
    geo = VisionGeometry.of(clip)
    exits = parse_exits(options.exits, geo.num_layers)
    fp16 = options.precision == "fp16"
    with staging_folder(out, overwrite=options.overwrite) as tmp:
        for (a, b), f in zip(stage_bounds(geo.num_layers, exits), vision_stage_files(len(exits) + 1), strict=True):
            ov.save_model(convert_vision_stage(clip, a, b, options.static_batch), tmp / f, compress_to_fp16=fp16)
        ov.save_model(convert_text(clip, options.static_batch), tmp / "text.xml", compress_to_fp16=fp16)
        write_common(tmp, ckpt)
        data = base_manifest(ckpt, exits, options.static_batch)
        data["variant"] = options.precision
        data["text"]["precision"] = options.precision
        data["vision"]["precision"] = options.precision
        manifest = write_manifest(tmp, data)
    return Manifest(Path(out).absolute(), manifest.data)
