"""ovclip.preprocess against transformers' CLIPImageProcessor (Pillow backend), on every kind of image.

Two paths are checked, as a user meets them:
- in memory: `preprocess(pil_image)` vs `CLIPImageProcessor(pil_image)` for any PIL mode and size;
- from a file: `preprocess(ovclip load_image(path))` vs `CLIPImageProcessor(transformers load_image(path))`
  (both apply the EXIF orientation and convert to RGB the same way).
The processor is built from a config dict here (no network).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ovclip.data.images import load_image
from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig, crop_box, preprocess, preprocess_gray_batch, resized_size

transformers = pytest.importorskip("transformers")
TOL = 1e-6
RNG = np.random.default_rng(12)


def reference(cfg: PreprocessConfig):
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls.from_dict(cfg.to_hf_dict())


def ref_pixels(proc, img: Image.Image) -> np.ndarray:
    return np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0])


def assert_parity(img: Image.Image, cfg: PreprocessConfig, proc=None) -> float:
    ref = ref_pixels(proc or reference(cfg), img)
    ours = preprocess(img, cfg)
    assert ours.shape == ref.shape == (3, cfg.size, cfg.size)
    diff = float(np.abs(ours - ref).max())
    assert diff <= TOL, f"{img.mode} {img.size}: max |diff| {diff}"
    return diff


def noise(w: int, h: int, c: int = 3) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


CFG = PreprocessConfig()  # 224, bicubic, OpenAI's mean/std


# --------------------------------------------------------------------------------- geometry


def test_issue_case_451x300_is_truncated_not_rounded():
    # 224 * 451 / 300 = 336.75: the reference resizes to 336 px (the old code rounded to 337)
    assert resized_size(451, 300, 224) == (336, 224)
    assert resized_size(300, 451, 224) == (224, 336)
    assert crop_box(336, 224, 224) == (56, 0, 280, 224)
    assert crop_box(227, 224, 224) == (1, 0, 225, 224)  # odd difference: floor, as transformers crops


@pytest.mark.parametrize(
    "w,h",
    [(451, 300), (300, 451), (640, 480), (480, 640), (225, 224), (224, 227), (1000, 229), (229, 1000)],
)
def test_non_square_and_portrait_rgb(w, h):
    assert_parity(Image.fromarray(noise(w, h)), CFG)


@pytest.mark.parametrize("w,h", [(1, 1), (2, 7), (7, 2), (5, 3), (13, 13), (31, 17)])
def test_tiny_images_upscaled(w, h):
    assert_parity(Image.fromarray(noise(w, h)), CFG)


def test_very_large_image():
    assert_parity(Image.fromarray(noise(3001, 2003)), CFG)


def test_many_sizes_small_crop():
    """A sweep where truncation and rounding, floor and half-even crops disagree, at a 32 px crop."""
    cfg = PreprocessConfig(size=32)
    proc = reference(cfg)
    sizes = [(w, h) for w in (33, 35, 47, 50, 61, 97) for h in (32, 34, 45, 51, 77)]
    moved = sum(
        resized_size(w, h, 32) != (max(32, round(w * 32 / min(w, h))), max(32, round(h * 32 / min(w, h))))
        for w, h in sizes
    )
    assert moved > 0  # the sweep holds sizes where rounding would have differed
    for w, h in sizes:
        assert_parity(Image.fromarray(noise(w, h)), cfg, proc)


def test_real_photos(photos):
    for img in photos:  # scikit-image photos: 512x512, 600x400, 451x300 (chelsea), 427x640
        assert_parity(img, CFG)


@pytest.mark.parametrize("resample", ["bilinear", "nearest", "lanczos"])
def test_other_filters(resample):
    assert_parity(Image.fromarray(noise(97, 61)), PreprocessConfig(size=48, resample=resample))


def test_shortest_edge_larger_than_crop():
    """A processor that resizes to 256 and crops 224 (size != crop_size) is read and matched."""
    d = PreprocessConfig().to_hf_dict() | {"size": {"shortest_edge": 256}}
    cfg = PreprocessConfig.from_hf_dict(d)
    assert (cfg.size, cfg.shortest_edge, cfg.resize_to) == (224, 256, 256)
    assert cfg.to_hf_dict()["size"] == {"shortest_edge": 256}
    proc = transformers.CLIPImageProcessorPil.from_dict(d)
    assert_parity(Image.fromarray(noise(400, 300)), cfg, proc)


def test_shortest_edge_below_crop_is_refused():
    with pytest.raises(OvclipError, match="short side to 200 px but crops 224 px"):
        PreprocessConfig(size=224, shortest_edge=200)


# --------------------------------------------------------------------------------- colour modes, in memory


def _palette(transparent: bool) -> Image.Image:
    img = Image.fromarray(noise(90, 60)).quantize(colors=16)
    if transparent:
        img.info["transparency"] = int(np.asarray(img)[0, 0])
    return img


def _modes() -> dict[str, Image.Image]:
    rgb, gray, alpha = noise(90, 60), noise(90, 60, 1), noise(90, 60, 1)
    rgb_key = rgb.copy()
    rgb_key[20:40, 30:60] = rgb[0, 0]  # a block of the transparent colour inside the crop
    rgb_t = Image.fromarray(rgb_key)
    rgb_t.info["transparency"] = tuple(int(v) for v in rgb[0, 0])
    return {
        "L": Image.fromarray(gray, "L"),
        "1": Image.fromarray(gray > 127),
        "LA": Image.fromarray(np.stack([gray, alpha], axis=2), "LA"),
        "RGBA": Image.fromarray(np.concatenate([rgb, alpha[:, :, None]], axis=2), "RGBA"),
        "RGB+transparency": rgb_t,
        "P": _palette(False),
        "P+transparency": _palette(True),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "I;16": Image.fromarray((gray.astype(np.uint16) * 257), "I;16"),
    }


@pytest.mark.parametrize("kind", list(_modes()))
def test_colour_modes_in_memory(kind):
    img = _modes()[kind]
    assert_parity(img, PreprocessConfig(size=48))


def test_alpha_is_composited_onto_white_in_memory():
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent black: the reference sees white
    out = preprocess(Image.fromarray(rgba, "RGBA"), PreprocessConfig(size=32))
    white = (1.0 - np.asarray(CFG.mean, np.float32)) / np.asarray(CFG.std, np.float32)
    np.testing.assert_allclose(out[:, 0, 0], white, atol=1e-6)


# --------------------------------------------------------------------------------- files: loader + preprocess


def _save(path, img: Image.Image, fmt: str, **kw) -> None:
    img.save(path, fmt, **kw)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _files(tmp_path) -> dict[str, object]:
    modes = _modes()
    files = {}
    for kind in ("L", "LA", "RGBA", "P", "P+transparency", "1"):
        p = tmp_path / f"{kind.replace('+', '_')}.png"
        _save(p, modes[kind], "PNG")
        files[kind + " png"] = p
    p = tmp_path / "photo.jpg"
    _save(p, Image.fromarray(noise(451, 300)), "JPEG", quality=90)
    files["jpeg 451x300"] = p
    p = tmp_path / "gray.jpg"
    _save(p, modes["L"], "JPEG")
    files["gray jpeg"] = p
    p = tmp_path / "palette.gif"
    _save(p, modes["P+transparency"], "GIF", transparency=modes["P+transparency"].info["transparency"])
    files["gif"] = p
    for o in range(2, 9):  # every EXIF orientation, JPEG and PNG
        p = tmp_path / f"exif{o}.jpg"
        _save(p, Image.fromarray(noise(120, 70)), "JPEG", exif=_exif(o))
        files[f"exif {o} jpeg"] = p
        p = tmp_path / f"exif{o}.png"
        _save(p, Image.fromarray(noise(70, 120)), "PNG", exif=_exif(o))
        files[f"exif {o} png"] = p
    return files


def test_files_through_both_loaders(tmp_path):
    from transformers.image_utils import load_image as hf_load_image

    cfg = PreprocessConfig(size=48)
    proc = reference(cfg)
    files = _files(tmp_path)
    for kind, path in files.items():
        ours, theirs = load_image(path), hf_load_image(str(path))
        assert ours.size == theirs.size, kind
        ref = ref_pixels(proc, theirs)
        assert np.abs(preprocess(ours, cfg) - ref).max() <= TOL, kind
    # the orientation really was applied (a rotation by 90 degrees swaps width and height)
    assert load_image(files["exif 6 jpeg"]).size == (70, 120)
    assert load_image(files["exif 8 png"]).size == (120, 70)


def test_file_alpha_dropped_like_transformers_load_image(tmp_path):
    """From a file, both loaders drop alpha (convert('RGB')); in memory the processor composites on white."""
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200  # transparent red
    path = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(path)
    cfg = PreprocessConfig(size=32)
    from_file = preprocess(load_image(path), cfg)
    in_memory = preprocess(Image.open(path), cfg)
    assert from_file[0, 0, 0] == pytest.approx((200 / 255 - CFG.mean[0]) / CFG.std[0], abs=1e-6)
    assert in_memory[0, 0, 0] == pytest.approx((1 - CFG.mean[0]) / CFG.std[0], abs=1e-6)


def test_16bit_file_is_scaled_not_clipped(tmp_path):
    """The documented departure: a 16-bit grayscale file is scaled to 8 bits; Pillow's convert clips it."""
    from transformers.image_utils import load_image as hf_load_image

    a = np.full((40, 40), 32768, np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(a, "I;16").save(path)
    assert np.asarray(load_image(path))[0, 0, 0] == 128  # 32768 / 257
    assert np.asarray(hf_load_image(str(path)))[0, 0, 0] == 255  # clipped


# --------------------------------------------------------------------------------- Fashion-MNIST: nothing moved


def test_gray_batch_equals_reference_on_shipped_images():
    from ovclip.data.builtin import builtin_eval

    d = builtin_eval()
    proc = reference(CFG)
    batch = preprocess_gray_batch(d.gray[:8], CFG)
    for i in range(8):  # 28x28 -> 224 is an exact x8: truncation and rounding agree, so no pixel moved
        ref = ref_pixels(proc, Image.fromarray(d.gray[i], "L"))
        assert np.abs(batch[i] - ref).max() <= TOL
