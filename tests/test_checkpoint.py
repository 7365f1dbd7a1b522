"""ovclip.checkpoint: every SRC kind gives the same embeddings as the model it was written from.

The reference is always an independent object: the tiny HF `CLIPModel` the test built, run on real photos
(scikit-image) and real token ids; the OpenAI-layout files are written with a hand-written inverse of the
converter under test (HF -> OpenAI), not with the converter itself.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EMBED, HEADS, IMAGE, T_LAYERS, WIDTH, build_tiny_model
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPModel

import ovclip.checkpoint.sources as sources
from ovclip.checkpoint import LoadedCheckpoint, load_checkpoint
from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig, preprocess
from ovclip.tokenizer import ClipTokenizer

V_LAYERS = 3  # one fewer than the shared tiny model's 4
TEXTS = ["a photo of an astronaut", "a cup of coffee", "a photo of a cat", ""]
TOL = 1e-5


# --- reference model and inputs -------------------------------------------------------------------


def tiny_model(hidden_act: str = "quick_gelu", seed: int = 0) -> CLIPModel:
    """Every parameter random (HF zero-initialises biases, which would hide a bias mapping error)."""
    return build_tiny_model(seed, vision_layers=V_LAYERS, hidden_act=hidden_act)


def photos() -> list[Image.Image]:
    try:
        from skimage import data

        arrays = [data.astronaut(), data.coffee(), data.chelsea()]
    except ImportError:  # scikit-image is a test extra; random pixels still exercise the same path
        arrays = [np.random.default_rng(i).integers(0, 256, (90, 120, 3), np.uint8) for i in range(3)]
    return [Image.fromarray(a) for a in arrays]


def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def embed(model: CLIPModel, cfg: PreprocessConfig, tokenizer: ClipTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.from_numpy(np.stack([preprocess(im, cfg) for im in photos()]))
    ids = torch.from_numpy(tokenizer(TEXTS))
    return _pooled(model.get_image_features(pixel_values=pixels)), _pooled(model.get_text_features(input_ids=ids))


def max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# --- HF -> OpenAI layout, written independently of ovclip.checkpoint.openai_layout ------------------


def hf_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    o = {
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].T.contiguous(),  # OpenAI: x @ proj
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T.contiguous(),
        "logit_scale": sd["logit_scale"],
        # Non-weights some OpenAI / open_clip files carry; the loader must ignore them.
        "attn_mask": torch.full((77, 77), float("-inf")).triu(1),
        "input_resolution": torch.tensor(IMAGE),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }
    for hf_tower, oa_tower, layers in (("vision_model", "visual.", V_LAYERS), ("text_model", "", T_LAYERS)):
        for i in range(layers):
            h, a = f"{hf_tower}.encoder.layers.{i}.", f"{oa_tower}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                o[f"{a}attn.in_proj_{kind}"] = torch.cat([sd[f"{h}self_attn.{x}_proj.{kind}"] for x in "qkv"])
                o[f"{a}attn.out_proj.{kind}"] = sd[f"{h}self_attn.out_proj.{kind}"]
                o[f"{a}ln_1.{kind}"] = sd[f"{h}layer_norm1.{kind}"]
                o[f"{a}ln_2.{kind}"] = sd[f"{h}layer_norm2.{kind}"]
                o[f"{a}mlp.c_fc.{kind}"] = sd[f"{h}mlp.fc1.{kind}"]
                o[f"{a}mlp.c_proj.{kind}"] = sd[f"{h}mlp.fc2.{kind}"]
    return {k: v.detach().clone().contiguous() for k, v in o.items()}


def save_torchscript(sd: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive whose module tree holds `sd` by key, like OpenAI's released .pt files."""

    class Root(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Root()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        mod = root
        for name in parents:
            if not hasattr(mod, name):
                mod.add_module(name, torch.nn.Module())
            mod = getattr(mod, name)
        mod.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():  # torch.jit is deprecated for new models; OpenAI's files still use it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(root, torch.zeros(1), check_trace=False).save(str(path))


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref() -> CLIPModel:
    return tiny_model()


@pytest.fixture(scope="module")
def ref_emb(ref: CLIPModel) -> tuple[torch.Tensor, torch.Tensor]:
    return embed(ref, PreprocessConfig(size=IMAGE), ClipTokenizer.builtin())


@pytest.fixture(scope="module")
def ref_emb_fp16(ref: CLIPModel) -> tuple[torch.Tensor, torch.Tensor]:
    """What a checkpoint stored in fp16 holds exactly: the reference weights rounded to fp16."""
    rounded = tiny_model()
    rounded.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})
    return embed(rounded, PreprocessConfig(size=IMAGE), ClipTokenizer.builtin())


@pytest.fixture(scope="module")
def files(ref: CLIPModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    hf_sd = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
    oa_sd = hf_to_openai(hf_sd)
    ref.save_pretrained(d / "hf_folder")
    PreprocessConfig(size=IMAGE).save(d / "hf_folder" / "preprocessor_config.json")
    ref.save_pretrained(d / "hf_folder_no_pre")
    save_file(oa_sd, d / "openai.safetensors")
    torch.save(oa_sd, d / "openai.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in oa_sd.items()}}, d / "open_clip_train.pth")
    save_file({k: v.half() for k, v in oa_sd.items()}, d / "openai_fp16.safetensors")
    save_torchscript({k: v.half() for k, v in oa_sd.items()}, d / "openai_jit.pt")
    save_file(hf_sd, d / "hf.safetensors")
    torch.save({"model": hf_sd}, d / "hf.bin")
    gelu = tiny_model("gelu")
    save_file(hf_to_openai(gelu.state_dict()), d / "open_clip_gelu.safetensors")
    (d / "open_clip_repo").mkdir()  # open_clip's Hub layout: weights + open_clip_config.json
    save_file(hf_to_openai(gelu.state_dict()), d / "open_clip_repo" / "open_clip_model.safetensors")
    (d / "open_clip_repo" / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    return {p.name: p for p in d.iterdir()}


# --- loading: same embeddings as the original -----------------------------------------------------

HEADS_OVERRIDE = {"vision_heads": HEADS, "text_heads": HEADS}  # width 64 would default to 64 // 64 = 1 head


@pytest.mark.parametrize(
    ("name", "kind", "kwargs", "stored"),
    [
        ("hf_folder", "hf-folder", {}, "fp32"),
        ("hf_folder_no_pre", "hf-folder", {}, "fp32"),
        ("openai.safetensors", "openai-state-dict", HEADS_OVERRIDE, "fp32"),
        ("openai.pt", "openai-state-dict", HEADS_OVERRIDE, "fp32"),
        ("open_clip_train.pth", "openai-state-dict", HEADS_OVERRIDE, "fp32"),
        ("hf.safetensors", "hf-state-dict", HEADS_OVERRIDE, "fp32"),
        ("hf.bin", "hf-state-dict", HEADS_OVERRIDE, "fp32"),
        ("openai_fp16.safetensors", "openai-state-dict", HEADS_OVERRIDE, "fp16"),
        ("openai_jit.pt", "openai-state-dict", HEADS_OVERRIDE, "fp16"),  # OpenAI's TorchScript release format
    ],
)
def test_loads_same_embeddings(files, ref_emb, ref_emb_fp16, name, kind, kwargs, stored):
    ck = load_checkpoint(str(files[name]), **kwargs)
    assert isinstance(ck, LoadedCheckpoint)
    assert (ck.kind, ck.trained, ck.source) == (kind, True, str(files[name].resolve()))
    assert not ck.model.training
    assert all(p.dtype == torch.float32 for p in ck.model.parameters())
    assert ck.preprocess == PreprocessConfig(size=IMAGE)  # from preprocessor_config.json or the image size
    assert ck.model.config.text_config.eos_token_id == 49407
    expected = ref_emb if stored == "fp32" else ref_emb_fp16
    assert max_diff(embed(ck.model, ck.preprocess, ck.tokenizer), expected) < TOL
    assert "\n" not in ck.description and files[name].name in ck.description


def test_parity_check_catches_a_layout_error(files, ref_emb):
    """The tolerance is meaningful: swapping q and k of one vision block moves the embeddings far beyond it."""
    sd = sources.read_tensor_file(files["openai.safetensors"])
    w = sd["visual.transformer.resblocks.0.attn.in_proj_weight"]
    sd["visual.transformer.resblocks.0.attn.in_proj_weight"] = torch.cat(
        [w[WIDTH : 2 * WIDTH], w[:WIDTH], w[2 * WIDTH :]]
    )
    bad = files["openai.safetensors"].with_name("swapped.safetensors")
    save_file(sd, bad)
    ck = load_checkpoint(str(bad), **HEADS_OVERRIDE)
    assert max_diff(embed(ck.model, ck.preprocess, ck.tokenizer), ref_emb) > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "matches"),
    [
        ({"hidden_act": "gelu", **HEADS_OVERRIDE}, True),  # open_clip-trained weights: gelu
        (HEADS_OVERRIDE, False),  # default is OpenAI's quick_gelu
        ({"hidden_act": "gelu"}, False),  # default heads: 64 // 64 = 1, not the 2 it was built with
    ],
)
def test_activation_and_heads_matter(files, kwargs, matches):
    gelu_ref = embed(tiny_model("gelu"), PreprocessConfig(size=IMAGE), ClipTokenizer.builtin())
    ck = load_checkpoint(str(files["open_clip_gelu.safetensors"]), **kwargs)
    diff = max_diff(embed(ck.model, ck.preprocess, ck.tokenizer), gelu_ref)
    assert (diff < TOL) if matches else (diff > 1e-3)


OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": EMBED,  # no "quick_gelu": open_clip builds gelu
        "vision_cfg": {"image_size": IMAGE, "layers": V_LAYERS, "width": WIDTH, "head_width": WIDTH // HEADS},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": HEADS, "layers": T_LAYERS},
    },
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"},
}


def test_open_clip_config_beside_the_weights_sets_activation_heads_and_preprocessing(files):
    pre = PreprocessConfig(size=IMAGE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resample="bilinear")
    gelu_ref = embed(tiny_model("gelu"), pre, ClipTokenizer.builtin())
    ck = load_checkpoint(str(files["open_clip_repo"] / "open_clip_model.safetensors"))
    assert ck.preprocess == pre
    assert ck.model.config.vision_config.hidden_act == "gelu" and ck.model.config.text_config.num_attention_heads == 2
    assert max_diff(embed(ck.model, ck.preprocess, ck.tokenizer), gelu_ref) < TOL
    # An explicit argument still wins over the file.
    forced = load_checkpoint(str(files["open_clip_repo"] / "open_clip_model.safetensors"), hidden_act="quick_gelu")
    assert forced.model.config.vision_config.hidden_act == "quick_gelu"


def test_builtin_is_the_fp16_folder_in_float32(ref, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    half = tiny_model().half()
    half.save_pretrained(folder)
    PreprocessConfig(size=IMAGE).save(folder / "preprocessor_config.json")
    monkeypatch.setattr(sources, "BUILTIN_MODEL_DIR", folder)
    expected = embed(half.float(), PreprocessConfig(size=IMAGE), ClipTokenizer.builtin())
    for src in (None, "builtin"):
        ck = load_checkpoint(src)
        assert (ck.kind, ck.source, ck.trained) == ("builtin", "builtin", True)
        assert next(ck.model.parameters()).dtype == torch.float32 and not ck.model.training
        assert max_diff(embed(ck.model, ck.preprocess, ck.tokenizer), expected) < TOL


def test_local_org_name_folder_never_goes_to_the_hub(files, ref_emb, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    shutil.copytree(files["hf_folder"], tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("network used"))
    ck = load_checkpoint("org/name")
    assert ck.kind == "hf-folder" and ck.source == str(tmp_path / "org" / "name")
    assert max_diff(embed(ck.model, ck.preprocess, ck.tokenizer), ref_emb) < TOL


# --- random:vit-b-32 ------------------------------------------------------------------------------


def vit_b_32_vision_params() -> int:
    """OpenAI ViT-B/32 visual tower incl. `visual.proj`, counted by hand from its architecture.

    conv1 3*32*32*768 = 2,359,296 (no bias); class 768; positions 50*768 = 38,400; ln_pre 1,536;
    one block: in_proj 3*768*768 + 3*768 = 1,771,776, out_proj 768*768 + 768 = 590,592,
    c_fc 768*3072 + 3072 = 2,362,368, c_proj 3072*768 + 768 = 2,360,064, ln_1 + ln_2 3,072 -> 7,087,872;
    12 blocks 85,054,464; ln_post 1,536; proj 768*512 = 393,216. Sum: 87,849,216.
    """
    w, layers, patch, grid, embed_dim = 768, 12, 32, 7, 512
    block = (3 * w * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w) + 2 * 2 * w
    return 3 * patch * patch * w + w + (grid * grid + 1) * w + 2 * w + layers * block + 2 * w + w * embed_dim


@pytest.fixture(scope="module")
def vit_b_32() -> LoadedCheckpoint:
    return load_checkpoint("random:vit-b-32")


def test_random_vit_b_32_has_openai_shapes(vit_b_32):
    m = vit_b_32.model
    vision = sum(p.numel() for n, p in m.named_parameters() if n.startswith(("vision_model.", "visual_projection.")))
    assert vit_b_32_vision_params() == 87_849_216
    assert vision == 87_849_216
    assert sum(p.numel() for p in m.parameters()) == 151_277_313  # the quoted full ViT-B/32 count
    v, t = m.config.vision_config, m.config.text_config
    got = (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size, v.patch_size, v.image_size)
    assert got == (768, 12, 12, 3072, 32, 224)
    got = (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size, t.max_position_embeddings)
    assert got == (512, 12, 8, 2048, 77)
    assert (t.vocab_size, t.eos_token_id, t.bos_token_id, t.pad_token_id) == (49408, 49407, 49406, 0)
    assert (v.hidden_act, t.hidden_act, m.config.projection_dim) == ("quick_gelu", "quick_gelu", 512)
    assert (vit_b_32.kind, vit_b_32.trained, vit_b_32.source) == ("random", False, "random:vit-b-32")
    assert "random" in vit_b_32.description and not m.training


def test_random_is_deterministic_and_leaves_global_rng_alone(vit_b_32):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = load_checkpoint("random:vit-b-32")
    assert torch.equal(torch.rand(3), expected_next)
    a, b = vit_b_32.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- refusing code and bad input ------------------------------------------------------------------


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_pickle_pt(path: Path, marker: Path) -> None:
    torch.save({"w": torch.zeros(2), "payload": RunsShell(marker)}, path)


def write_pickle_torchscript(path: Path, marker: Path) -> None:
    """A TorchScript-looking archive whose data.pkl would run a shell command if fully unpickled."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/constants.pkl", pickle.dumps(()))
        z.writestr("evil/data.pkl", pickle.dumps({"w": RunsShell(marker)}, protocol=2))


@pytest.mark.parametrize("writer", [write_pickle_pt, write_pickle_torchscript])
def test_pickle_that_runs_code_is_refused(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    writer(path, marker)
    assert not marker.exists()
    with pytest.raises(OvclipError) as e:
        load_checkpoint(str(path))
    msg = str(e.value)
    assert "holds Python objects other than tensors" in msg and "does not execute checkpoint code" in msg
    assert "system" in msg and "\n" not in msg
    assert not marker.exists()


def _truncate(src: Path, dst: Path) -> str:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return str(dst)


def _drop_key(src: Path, dst: Path, key: str) -> str:
    sd = sources.read_tensor_file(src)
    del sd[key]
    save_file(sd, dst)
    return str(dst)


def _write(path: Path, content: str | bytes | dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        save_file(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path.parent if path.name == "config.json" else path)


ERROR_CASES = {
    "missing path": (lambda f, t: str(t / "nope.safetensors"), "no such file or folder"),
    "folder without config.json": (lambda f, t: str(t), "has no config.json"),
    "folder that is not CLIP": (
        lambda f, t: _write(t / "bert" / "config.json", '{"model_type": "bert"}'),
        "not 'clip'",
    ),
    "truncated safetensors": (
        lambda f, t: _truncate(f["openai.safetensors"], t / "half.safetensors"),
        "corrupt or trunc",
    ),
    "truncated .pt": (lambda f, t: _truncate(f["openai.pt"], t / "half.pt"), "corrupt or truncated"),
    "garbage .bin": (lambda f, t: _write(t / "x.bin", b"not a checkpoint at all"), "corrupt or truncated"),
    "unknown extension": (lambda f, t: _write(t / "model.onnx", b"\x08\x01"), "unknown checkpoint extension"),
    "non-CLIP tensors": (
        lambda f, t: _write(t / "r.safetensors", {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.bias": torch.zeros(10)}),
        "not a CLIP state dict",
    ),
    "ResNet CLIP": (
        lambda f, t: _write(t / "rn.safetensors", {"visual.layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1)}),
        "only ViT CLIP towers are supported",
    ),
    "OpenAI dict missing a weight": (
        lambda f, t: _drop_key(f["openai.safetensors"], t / "m.safetensors", "transformer.resblocks.1.ln_2.bias"),
        "missing",
    ),
    "OpenAI dict missing ln_final": (
        lambda f, t: _drop_key(f["openai.safetensors"], t / "m.safetensors", "ln_final.weight"),
        "missing 'ln_final.weight'",
    ),
    "HF dict missing a layer weight": (
        lambda f, t: _drop_key(f["hf.safetensors"], t / "m.safetensors", "vision_model.encoder.layers.2.mlp.fc1.bias"),
        "missing",
    ),
    "unknown random model": (lambda f, t: "random:vit-x-99", "known: random:tiny, random:vit-b-32"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_clear_line(files, tmp_path, case):
    make_src, expected = ERROR_CASES[case]
    src = make_src(files, tmp_path)
    with pytest.raises(OvclipError) as e:
        load_checkpoint(src, **HEADS_OVERRIDE)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_builtin_not_built_yet(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BUILTIN_MODEL_DIR", tmp_path / "model")
    with pytest.raises(OvclipError, match=r"not built yet.*python calibration/train_builtin\.py"):
        load_checkpoint()


def test_offline_hub_id_is_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OvclipError) as e:
        load_checkpoint("ovclip-test/surely-not-cached-clip")
    msg = str(e.value)
    assert "could not download ovclip-test/surely-not-cached-clip from the Hugging Face Hub: no network?" in msg
    assert "\n" not in msg
