"""CLIP shapes, and the OpenAI / open_clip checkpoint layout converted to Hugging Face `CLIPModel` keys.

`ClipShape` is the open_clip-style description of a ViT CLIP (widths, depths, heads, patch, image size,
context, vocabulary, embedding size). It is inferred from tensor shapes of either key layout and turned
into a `transformers.CLIPConfig`, and it is what `ovclip/configs/random-*.json` files describe.

OpenAI's releases are TorchScript archives; `read_torchscript_weights` takes the tensors out of one
with a restricted unpickler that resolves no Python code (see its docstring).
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovclip.errors import OvclipError

if TYPE_CHECKING:
    import torch
    from transformers import CLIPConfig

EOT_ID, SOT_ID, PAD_ID = 49407, 49406, 0
OPENAI_HEAD_WIDTH = 64  # OpenAI CLIP: heads = width // 64 in both towers
# Keys some OpenAI / open_clip files carry that are not weights.
IGNORED_KEYS = frozenset({"attn_mask", "input_resolution", "context_length", "vocab_size"})
_HF_DROP = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


@dataclass(frozen=True)
class ClipShape:
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    hidden_act: str = "quick_gelu"

    def to_config(self) -> CLIPConfig:
        from transformers import CLIPConfig

        vision = {
            "hidden_size": self.vision_width,
            "intermediate_size": self.vision_mlp,
            "num_hidden_layers": self.vision_layers,
            "num_attention_heads": self.vision_heads,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_act": self.hidden_act,
            "layer_norm_eps": 1e-5,
        }
        text = {
            "hidden_size": self.text_width,
            "intermediate_size": self.text_mlp,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "max_position_embeddings": self.context_length,
            "vocab_size": self.vocab_size,
            "hidden_act": self.hidden_act,
            "layer_norm_eps": 1e-5,
            # HF pools at the first EOT, which is OpenAI's argmax(ids) for CLIP's tokenizer.
            "eos_token_id": EOT_ID,
            "bos_token_id": SOT_ID,
            "pad_token_id": PAD_ID,
        }
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.embed_dim)

    @classmethod
    def from_open_clip_dict(cls, d: dict, where: str) -> ClipShape:
        """An open_clip model config (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`) -> ClipShape."""
        try:
            v, t = d["vision_cfg"], d["text_cfg"]
            vw, tw = int(v["width"]), int(t["width"])
            return cls(
                embed_dim=int(d["embed_dim"]),
                image_size=int(v["image_size"]),
                patch_size=int(v["patch_size"]),
                vision_width=vw,
                vision_layers=int(v["layers"]),
                vision_heads=int(v.get("heads", vw // int(v.get("head_width", OPENAI_HEAD_WIDTH)))),
                vision_mlp=int(vw * float(v.get("mlp_ratio", 4.0))),
                context_length=int(t.get("context_length", 77)),
                vocab_size=int(t.get("vocab_size", 49408)),
                text_width=tw,
                text_layers=int(t["layers"]),
                text_heads=int(t.get("heads", 8)),
                text_mlp=int(tw * float(t.get("mlp_ratio", 4.0))),
                hidden_act="quick_gelu" if d.get("quick_gelu", False) else "gelu",
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OvclipError(f"{where}: not an open_clip model config ({type(e).__name__}: {e}); fix the file") from e


def default_heads(width: int, override: int | None, tower: str, where: str) -> int:
    if override is not None:
        heads = override
    elif width % OPENAI_HEAD_WIDTH == 0:
        heads = width // OPENAI_HEAD_WIDTH
    else:
        raise OvclipError(
            f"{where}: {tower} width {width} is not a multiple of 64, so its head count cannot be inferred; "
            f"pass `{tower}_heads`",
            params=f"{tower}_heads",
        )
    if heads <= 0 or width % heads:
        raise OvclipError(
            f"{where}: {tower} width {width} does not split into {heads} heads; pass `{tower}_heads`",
            params=f"{tower}_heads",
        )
    return heads


def _count_layers(keys: list[str], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    if idx != set(range(len(idx))):
        raise OvclipError(f"layer indices under {prefix!r} are not contiguous: {sorted(idx)}")
    return len(idx)


def _patch_geometry(conv: torch.Tensor, pos: torch.Tensor, where: str) -> tuple[int, int]:
    patch = int(conv.shape[-1])
    grid = round((int(pos.shape[0]) - 1) ** 0.5)
    if conv.ndim != 4 or conv.shape[-2] != patch or grid * grid + 1 != pos.shape[0]:
        raise OvclipError(f"{where}: vision embeddings {tuple(conv.shape)} / {tuple(pos.shape)} are not a square ViT")
    return patch, grid * patch


def shape_from_openai(
    sd: dict[str, torch.Tensor], where: str, hidden_act: str, vision_heads: int | None, text_heads: int | None
) -> ClipShape:
    keys = list(sd)
    try:
        conv, vpos = sd["visual.conv1.weight"], sd["visual.positional_embedding"]
        patch, image = _patch_geometry(conv, vpos, where)
        vw, tw = int(conv.shape[0]), int(sd["ln_final.weight"].shape[0])
        vocab, ctx = (int(n) for n in (sd["token_embedding.weight"].shape[0], sd["positional_embedding"].shape[0]))
        return ClipShape(
            embed_dim=int(sd["visual.proj"].shape[1]),
            image_size=image,
            patch_size=patch,
            vision_width=vw,
            vision_layers=_count_layers(keys, "visual.transformer.resblocks."),
            vision_heads=default_heads(vw, vision_heads, "vision", where),
            vision_mlp=int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            context_length=ctx,
            vocab_size=vocab,
            text_width=tw,
            text_layers=_count_layers(keys, "transformer.resblocks."),
            text_heads=default_heads(tw, text_heads, "text", where),
            text_mlp=int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            hidden_act=hidden_act,
        )
    except KeyError as e:
        raise OvclipError(
            f"{where}: OpenAI-layout CLIP state dict is missing {e.args[0]!r}; the file is incomplete"
        ) from e


def shape_from_hf(
    sd: dict[str, torch.Tensor], where: str, hidden_act: str, vision_heads: int | None, text_heads: int | None
) -> ClipShape:
    keys = list(sd)
    try:
        conv = sd["vision_model.embeddings.patch_embedding.weight"]
        vpos = sd["vision_model.embeddings.position_embedding.weight"]
        patch, image = _patch_geometry(conv, vpos, where)
        tok, tpos = (
            sd["text_model.embeddings.token_embedding.weight"],
            sd["text_model.embeddings.position_embedding.weight"],
        )
        vw, tw = int(conv.shape[0]), int(tok.shape[1])
        return ClipShape(
            embed_dim=int(sd["visual_projection.weight"].shape[0]),
            image_size=image,
            patch_size=patch,
            vision_width=vw,
            vision_layers=_count_layers(keys, "vision_model.encoder.layers."),
            vision_heads=default_heads(vw, vision_heads, "vision", where),
            vision_mlp=int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            context_length=int(tpos.shape[0]),
            vocab_size=int(tok.shape[0]),
            text_width=tw,
            text_layers=_count_layers(keys, "text_model.encoder.layers."),
            text_heads=default_heads(tw, text_heads, "text", where),
            text_mlp=int(sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            hidden_act=hidden_act,
        )
    except KeyError as e:
        raise OvclipError(
            f"{where}: Hugging Face-layout CLIP state dict is missing {e.args[0]!r}; the file is incomplete"
        ) from e


def clean_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the position-id buffers older transformers versions saved."""
    return {k: v for k, v in sd.items() if k not in _HF_DROP}


_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_FLAT = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def openai_to_hf(sd: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """OpenAI / open_clip ViT CLIP keys -> Hugging Face CLIPModel keys. Unknown keys are an error."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, t in sd.items():
        if key.rsplit(".", 1)[-1] in IGNORED_KEYS:
            continue
        if key in _FLAT:
            out[_FLAT[key]] = t
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = t.t().contiguous()
        elif m := _BLOCK_RE.match(key):
            tower = "vision_model" if m.group(1) else "text_model"
            base, rest = f"{tower}.encoder.layers.{m.group(2)}.", m.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, part in zip(("q", "k", "v"), t.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = part.contiguous()
            elif rest in _BLOCK:
                out[base + _BLOCK[rest]] = t
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise OvclipError(
            f"{where}: OpenAI/open_clip keys ovclip cannot map to a plain ViT CLIP: {', '.join(unknown[:4])}"
            f"{' ...' if len(unknown) > 4 else ''} (layer scale, attention pooling or custom towers are not supported)"
        )
    return out


# --- TorchScript archives (OpenAI's own .pt releases) ------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _ScriptObject:
    """Stands in for any `__torch__.*` class: it only collects the attribute dict pickled for it."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    import torch

    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _ordered_dict() -> dict:
    return {}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._root = archive, root
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return _ordered_dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        import torch

        if not (isinstance(pid, tuple) and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        key, dtype = str(pid[2]), getattr(torch, pid[1].dtype)
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._root}/data/{key}"))
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:  # torch.save archives have data.pkl but never constants.pkl or code/
        return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in z.namelist())


def read_torchscript_weights(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, by their module path, without running its code.

    The archive's `data.pkl` names `__torch__.*` classes (the scripted modules), tensor rebuild functions and
    storage types. Our unpickler resolves the module classes to an inert attribute holder, the rebuilders to
    a strided view over bytes read from the archive, and refuses every other global, so nothing in the file
    is executed. The `code/` folder is never read.
    """
    import torch

    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise OvclipError(f"{path}: a TorchScript archive without one data.pkl; the file is damaged")
        root_obj = _RestrictedUnpickler(z.read(pkl[0]), z, pkl[0].split("/")[0]).load()
    out: dict[str, torch.Tensor] = {}

    def walk(obj: Any, prefix: str) -> None:
        for name, value in getattr(obj, "_state", {}).items():
            if isinstance(value, torch.Tensor):
                out[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                walk(value, f"{prefix}{name}.")

    walk(root_obj, "")
    return out
