"""Resolve a `--model SRC` string to a float32, eval-mode torch `CLIPModel` with its preprocessing.

SRC is 'builtin' (or None), 'random:<name>', a Hugging Face CLIP folder, a state-dict file (.safetensors,
.pt, .pth, .bin) in Hugging Face or OpenAI/open_clip key layout, or a Hugging Face Hub id. Only the Hub id
touches the network. Pickled files are read with `torch.load(weights_only=True)` or, for OpenAI's
TorchScript releases, a restricted unpickler: no code from a checkpoint is ever executed.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovclip.checkpoint import openai_layout as oa
from ovclip.checkpoint.random_models import SEED, build_random_model, random_config
from ovclip.errors import OvclipError, first_line
from ovclip.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig
from ovclip.tokenizer import ClipTokenizer

if TYPE_CHECKING:
    import torch
    from transformers import CLIPConfig, CLIPModel

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "builtin" / "model"
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
KINDS = ("builtin", "random", "hf-folder", "hf-hub", "hf-state-dict", "openai-state-dict")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")
_KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "clip.")
_SOURCES_HELP = (
    "pass 'builtin', 'random:vit-b-32', a Hugging Face CLIP folder, a .safetensors/.pt/.pth/.bin CLIP checkpoint "
    "or a Hugging Face Hub id"
)


@dataclass
class LoadedCheckpoint:
    model: CLIPModel  # torch, float32, eval mode
    tokenizer: ClipTokenizer
    preprocess: PreprocessConfig
    source: str  # resolved: absolute path, 'builtin', 'random:<name>' or hub id
    kind: str  # one of KINDS
    trained: bool  # False for random weights: nothing may report accuracy for it
    description: str  # one line for tables


@dataclass(frozen=True)
class Overrides:
    hidden_act: str | None = None
    vision_heads: int | None = None
    text_heads: int | None = None

    def apply(self, config: CLIPConfig, where: str) -> CLIPConfig:
        if self.hidden_act is not None:
            from transformers.activations import ACT2FN

            if self.hidden_act not in ACT2FN:
                raise OvclipError(
                    f"hidden_act={self.hidden_act!r} is not an activation transformers knows; use quick_gelu or gelu",
                    params="hidden_act",
                )
            config.vision_config.hidden_act = config.text_config.hidden_act = self.hidden_act
        for tower, heads in (("vision", self.vision_heads), ("text", self.text_heads)):
            if heads is not None:
                sub = getattr(config, f"{tower}_config")
                sub.num_attention_heads = oa.default_heads(sub.hidden_size, heads, tower, where)
        return config


def load_checkpoint(
    src: str | None = None,
    *,
    hidden_act: str | None = None,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> LoadedCheckpoint:
    """Load SRC as a float32 eval-mode `CLIPModel`.

    `hidden_act` overrides the activation (state dicts default to OpenAI's quick_gelu; open_clip-trained
    weights need 'gelu'); `vision_heads` / `text_heads` override the head counts (state dicts default to
    width // 64, OpenAI's convention). An `open_clip_config.json` beside an OpenAI-layout file supplies
    all three (and mean/std) unless given here. Overrides apply to every source.
    """
    ov = Overrides(hidden_act, vision_heads, text_heads)
    if src is None or src == "builtin":
        return _load_builtin(ov)
    if src.startswith("random:"):
        return _load_random(src.removeprefix("random:"), ov)
    path = Path(src).expanduser()
    if path.is_dir():
        return _load_hf_folder(path.resolve(), ov)
    if path.is_file():
        return _load_state_dict_file(path.resolve(), ov)
    if _HUB_ID.match(src) and path.suffix.lower() not in STATE_DICT_SUFFIXES:
        return _load_hub(src, ov)
    raise OvclipError(f"{src}: no such file or folder; {_SOURCES_HELP}")


# --- helpers ---------------------------------------------------------------------------------------


def _summary(config: CLIPConfig) -> str:
    v, t = config.vision_config, config.text_config
    return (
        f"ViT {v.num_hidden_layers}x{v.hidden_size} patch {v.patch_size} @{v.image_size}px, "
        f"text {t.num_hidden_layers}x{t.hidden_size}, embed {config.projection_dim}, {v.hidden_act}"
    )


def _finish(
    model: CLIPModel, preprocess: PreprocessConfig, source: str, kind: str, description: str
) -> LoadedCheckpoint:
    model = model.float().eval()
    tokenizer = ClipTokenizer.builtin(context_length=model.config.text_config.max_position_embeddings)
    return LoadedCheckpoint(model, tokenizer, preprocess, source, kind, kind != "random", description)


_BOILERPLATE = ("Weights only load failed", "Check the documentation", "In PyTorch 2.6", "Please file an issue")


def _first_line(e: BaseException) -> str:
    """The informative first sentence of an exception message (torch's boilerplate skipped), for a one-line
    error; the exception's type where the message is empty or too short to say more than it."""
    line = first_line(e, skip=_BOILERPLATE, default="")
    if not line:
        return type(e).__name__
    sentence = line.split(". ")[0]
    if len(sentence) < 16:  # KeyError('101'), EOFError(''): the type says more than the text
        sentence = f"{type(e).__name__}: {sentence}"
    return sentence if len(sentence) <= 160 else sentence[:157] + "..."


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OvclipError(f"{path}: unreadable JSON ({_first_line(e)}); replace the file") from e
    if not isinstance(d, dict):
        raise OvclipError(f"{path}: expected a JSON object; replace the file")
    return d


def _clip_config(config_file: Path, ov: Overrides, where: str) -> CLIPConfig:
    from transformers import CLIPConfig

    raw = _read_json(config_file)
    if raw.get("model_type") != "clip":
        raise OvclipError(
            f"{where}: config.json has model_type {raw.get('model_type')!r}, not 'clip'; "
            "ovclip loads Hugging Face CLIPModel (ViT) checkpoints only"
        )
    return ov.apply(CLIPConfig.from_dict(raw), where)


def _from_pretrained(ref: str | Path, config: CLIPConfig, where: str, **kw: Any) -> CLIPModel:
    import torch
    from transformers import CLIPModel

    try:
        model, info = CLIPModel.from_pretrained(ref, config=config, dtype=torch.float32, output_loading_info=True, **kw)
    except OvclipError:
        raise
    except Exception as e:  # transformers raises OSError, ValueError, RuntimeError, SafetensorError ...
        raise OvclipError(f"{where}: could not load the CLIP weights ({_first_line(e)})") from e
    missing = sorted(info.get("missing_keys", ())) + sorted(k for k, *_ in info.get("mismatched_keys", ()))
    if missing:
        raise OvclipError(f"{where}: the weights do not cover the model in config.json (e.g. {missing[0]}); re-save it")
    return model


# --- sources ---------------------------------------------------------------------------------------


def _load_builtin(ov: Overrides) -> LoadedCheckpoint:
    if not (BUILTIN_MODEL_DIR / "config.json").is_file():
        raise OvclipError(
            f"the built-in model is not built yet ({BUILTIN_MODEL_DIR} is missing); "
            "build it with `python calibration/train_builtin.py` or pass another `src`",
            params="src",
        )
    ck = _load_hf_folder(BUILTIN_MODEL_DIR, ov)
    ck.source, ck.kind = "builtin", "builtin"
    ck.description = f"built-in CLIP trained on Fashion-MNIST ({_summary(ck.model.config)})"
    return ck


def _load_random(name: str, ov: Overrides) -> LoadedCheckpoint:
    shape, desc = random_config(name)
    where = f"random:{name}"
    model = build_random_model(ov.apply(shape.to_config(), where), SEED)
    preprocess = PreprocessConfig(size=shape.image_size)
    return _finish(model, preprocess, where, "random", f"random weights (seed {SEED}), {desc} — speed only")


def _load_hf_folder(path: Path, ov: Overrides) -> LoadedCheckpoint:
    if not (path / "config.json").is_file():
        raise OvclipError(f"{path}: folder has no config.json; {_SOURCES_HELP}")
    config = _clip_config(path / "config.json", ov, str(path))
    model = _from_pretrained(path, config, str(path), local_files_only=True)
    pre_file = path / "preprocessor_config.json"
    if pre_file.is_file():
        preprocess = PreprocessConfig.from_hf_dict(_read_json(pre_file))
    else:
        preprocess = PreprocessConfig(size=config.vision_config.image_size)
    return _finish(
        model, preprocess, str(path), "hf-folder", f"{path.name}: Hugging Face CLIP folder ({_summary(config)})"
    )


def _load_hub(repo_id: str, ov: Overrides) -> LoadedCheckpoint:
    config = _clip_config(_hub_file(repo_id, "config.json", required=True), ov, repo_id)
    model = _from_pretrained(repo_id, config, repo_id)
    pre_file = _hub_file(repo_id, "preprocessor_config.json", required=False)
    if pre_file is not None:
        preprocess = PreprocessConfig.from_hf_dict(_read_json(pre_file))
    else:
        preprocess = PreprocessConfig(size=config.vision_config.image_size)
    return _finish(model, preprocess, repo_id, "hf-hub", f"{repo_id} from the Hugging Face Hub ({_summary(config)})")


def _hub_file(repo_id: str, filename: str, required: bool) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except RepositoryNotFoundError as e:
        raise OvclipError(
            f"{repo_id}: no such (public) model on the Hugging Face Hub; check the id or pass a local folder or file"
        ) from e
    except LocalEntryNotFoundError as e:  # offline, or no connection and not cached (subclass of the next one)
        raise OvclipError(
            f"could not download {repo_id} from the Hugging Face Hub: no network? pass a local folder or file"
        ) from e
    except EntryNotFoundError as e:
        if not required:
            return None
        raise OvclipError(f"{repo_id} on the Hugging Face Hub has no {filename}: not a transformers CLIP model") from e
    except Exception as e:  # HTTP errors, timeouts, offline mode
        raise OvclipError(
            f"could not download {repo_id} from the Hugging Face Hub: no network? pass a local folder or file "
            f"({_first_line(e)})"
        ) from e


# --- state-dict files ------------------------------------------------------------------------------


def _objects_error(path: Path, detail: str) -> OvclipError:
    return OvclipError(
        f"{path}: the file holds Python objects other than tensors ({detail}); ovclip does not execute "
        "checkpoint code: save a plain state dict (torch.save(model.state_dict())) or a .safetensors file"
    )


def _corrupt_error(path: Path, e: BaseException) -> OvclipError:
    return OvclipError(f"{path}: corrupt or truncated checkpoint ({_first_line(e)}); re-download or re-save it")


def read_tensor_file(path: Path) -> Any:
    """The raw object in a .safetensors / .pt / .pth / .bin file, loaded without executing code."""
    import torch

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError
            raise _corrupt_error(path, e) from e
    if suffix not in STATE_DICT_SUFFIXES:
        raise OvclipError(
            f"{path}: unknown checkpoint extension {path.suffix or '(none)'!r}; "
            f"expected a folder or one of {', '.join(STATE_DICT_SUFFIXES)}"
        )
    try:
        if oa.is_torchscript_archive(path):
            return oa.read_torchscript_weights(path)
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except OvclipError:
        raise
    except pickle.UnpicklingError as e:  # torch's weights-only refusal or our restricted unpickler's
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise _objects_error(path, found.group(1)) from e
        raise _corrupt_error(path, e) from e
    except Exception as e:  # RuntimeError from the zip reader, EOFError, KeyError on garbage ...
        raise _corrupt_error(path, e) from e


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    for _ in range(3):  # {'state_dict': {...}}, {'model': {...}}, nested once or twice
        if not isinstance(obj, dict) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise OvclipError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; {_SOURCES_HELP}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise OvclipError(f"{path}: holds no tensors; {_SOURCES_HELP}")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k.removeprefix(prefix): v for k, v in sd.items()}
                stripped = True
    return sd


def _layout(sd: dict[str, torch.Tensor], path: Path) -> str:
    keys = list(sd)
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in keys):
        raise OvclipError(f"{path}: a ModifiedResNet CLIP; only ViT CLIP towers are supported")
    if "visual.conv1.weight" in sd or any(k.startswith("visual.transformer.") for k in keys):
        return "openai"
    if any(k.startswith("vision_model.") for k in keys) and any(k.startswith("text_model.") for k in keys):
        return "hf"
    sample = ", ".join(keys[:3])
    raise OvclipError(
        f"{path}: not a CLIP state dict (keys like {sample}); ovclip reads Hugging Face CLIPModel "
        "or OpenAI/open_clip ViT CLIP weights"
    )


def _load_strict(model: CLIPModel, sd: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        more = " ..." if len(missing) + len(unexpected) > 3 else ""
        raise OvclipError(f"{where}: CLIP state dict does not match the inferred model: {what}{more}")
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise OvclipError(
                f"{where}: {k} has shape {tuple(v.shape)}, the inferred model expects {tuple(expected[k].shape)}; "
                "the file mixes shapes of different models"
            )
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


def _open_clip_sidecar(path: Path, ov: Overrides) -> tuple[Overrides, dict] | None:
    """`open_clip_config.json` beside the file (open_clip's Hub layout): activation, heads, mean/std.

    Explicit overrides win; open_clip's own defaults fill the rest (no `quick_gelu` means gelu, text heads 8,
    vision heads width // head_width with head_width 64).
    """
    side = path.parent / "open_clip_config.json"
    if not side.is_file():
        return None
    d = _read_json(side)
    mc, pc = d.get("model_cfg"), d.get("preprocess_cfg") or {}
    if not isinstance(mc, dict) or not isinstance(pc, dict):
        raise OvclipError(f"{side}: no model_cfg object; not an open_clip config, move it away or fix it")
    v, t = mc.get("vision_cfg") or {}, mc.get("text_cfg") or {}
    try:
        vision_heads = v.get("heads") or (int(v["width"]) // int(v.get("head_width", 64)) if "width" in v else None)
        found = Overrides("quick_gelu" if mc.get("quick_gelu") else "gelu", vision_heads, int(t.get("heads", 8)))
    except (TypeError, ValueError) as e:
        raise OvclipError(f"{side}: unreadable vision_cfg/text_cfg ({_first_line(e)}); fix the file") from e
    resample = str(pc.get("interpolation", "bicubic"))
    if resample not in ("bicubic", "bilinear", "nearest", "lanczos"):
        raise OvclipError(f"{side}: interpolation {resample!r} is not one ovclip implements; use bicubic")
    pre = {"mean": tuple(pc.get("mean", CLIP_MEAN)), "std": tuple(pc.get("std", CLIP_STD)), "resample": resample}
    merged = Overrides(
        ov.hidden_act or found.hidden_act, ov.vision_heads or found.vision_heads, ov.text_heads or found.text_heads
    )
    return merged, pre


def _load_state_dict_file(path: Path, ov: Overrides) -> LoadedCheckpoint:
    from transformers import CLIPModel

    sd = _state_dict(read_tensor_file(path), path)
    where, pre, extra = str(path), {}, ""
    if _layout(sd, path) == "openai":
        if side := _open_clip_sidecar(path, ov):
            (ov, pre), extra = side, " + open_clip_config.json"
        act = ov.hidden_act or "quick_gelu"
        shape = oa.shape_from_openai(sd, where, act, ov.vision_heads, ov.text_heads)
        sd, kind, layout = oa.openai_to_hf(sd, where), "openai-state-dict", "OpenAI/open_clip"
    else:
        shape = oa.shape_from_hf(sd, where, ov.hidden_act or "quick_gelu", ov.vision_heads, ov.text_heads)
        sd, kind, layout = oa.clean_hf(sd), "hf-state-dict", "Hugging Face"
    config = ov.apply(shape.to_config(), where)
    model = CLIPModel(config)
    _load_strict(model, sd, where)
    desc = f"{path.name}: {layout} state dict{extra} ({_summary(config)})"
    return _finish(model, PreprocessConfig(size=shape.image_size, **pre), str(path), kind, desc)
