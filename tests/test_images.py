"""load_image: every colour mode CLIP may meet, and every way a file can be bad, built with Pillow."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

import ovclip.data.images as images_mod
from ovclip.data.images import is_image_name, load_image
from ovclip.errors import OvclipError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # H=12, W=16
GRAY = RNG.integers(0, 256, (12, 16), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (12, 16), dtype=np.uint8)


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------- good files: (name, build(path)->expected RGB)


def _rgb_png(path):
    Image.fromarray(RGB).save(path, "PNG")
    return RGB


def _png_named_jpg(path):
    path.write_bytes(_png_bytes(Image.fromarray(RGB)))
    return RGB


def _gray(path):
    Image.fromarray(GRAY, "L").save(path, "PNG")
    return np.repeat(GRAY[:, :, None], 3, axis=2)


def _one_bit(path):
    bits = GRAY > 127
    Image.fromarray(bits).convert("1").save(path, "PNG")
    return np.repeat(np.where(bits, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)


def _la(path):
    Image.fromarray(np.stack([GRAY, ALPHA], axis=2), "LA").save(path, "PNG")
    return np.repeat(GRAY[:, :, None], 3, axis=2)  # alpha dropped, as convert("RGB") does


def _rgba(path):
    rgba = np.concatenate([RGB, ALPHA[:, :, None]], axis=2)
    rgba[0, 0, 3] = 0  # a fully transparent pixel keeps its stored colour
    Image.fromarray(rgba, "RGBA").save(path, "PNG")
    return RGB


def _palette_transparent(path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    idx = (GRAY % 3).astype(np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette)
    img.save(path, "PNG", transparency=0)  # index 0 (red) transparent
    colours = np.array(palette[:9], np.uint8).reshape(3, 3)
    return colours[idx]


def _gray16(path):
    a = np.zeros((12, 16), np.uint16)
    a[0, :4] = [0, 32896, 65535, 2570]  # -> 0, 128, 255, 10
    a[1:] = 257 * GRAY[1:].astype(np.uint16)
    Image.fromarray(a).save(path, "PNG")
    g = np.zeros((12, 16), np.uint8)
    g[0, :4] = [0, 128, 255, 10]
    g[1:] = GRAY[1:]
    return np.repeat(g[:, :, None], 3, axis=2)


def _gray32_tiff(path):
    a = 257 * GRAY.astype(np.int32)
    Image.fromarray(a, "I").save(path, "TIFF")
    return np.repeat(GRAY[:, :, None], 3, axis=2)


def _cmyk_tiff(path):
    cmyk = RNG.integers(0, 256, (12, 16, 4), dtype=np.uint8)
    cmyk[0, 0], cmyk[0, 1] = (0, 0, 0, 0), (255, 0, 0, 0)
    img = Image.fromarray(cmyk, "CMYK")
    img.save(path, "TIFF")
    expected = np.asarray(Image.open(path).convert("RGB"))  # Pillow's own conversion
    assert tuple(expected[0, 0]) == (255, 255, 255) and tuple(expected[0, 1]) == (0, 255, 255)
    return expected


def _animated_gif(path):
    frames = [Image.new("RGB", (16, 12), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    return np.broadcast_to(np.array([255, 0, 0], np.uint8), (12, 16, 3))


GOOD = {
    "rgb.png": _rgb_png,
    "png-bytes.jpg": _png_named_jpg,
    "gray.png": _gray,
    "bits.png": _one_bit,
    "gray-alpha.png": _la,
    "rgba.png": _rgba,
    "palette-transparent.png": _palette_transparent,
    "gray16.png": _gray16,
    "gray32.tif": _gray32_tiff,
    "cmyk.tif": _cmyk_tiff,
    "animated.gif": _animated_gif,
    "Ünïcödé 猫.PNG": _rgb_png,
}


@pytest.mark.parametrize("name", list(GOOD))
def test_good_image_loads_as_expected_rgb(tmp_path, name):
    path = tmp_path / name
    expected = GOOD[name](path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == (expected.shape[1], expected.shape[0])
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_gray16_known_values(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[65535, 32896, 0, 257]], np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [255, 128, 0, 1]
    # what plain Pillow does (clip at 255), to show the difference is real
    assert np.asarray(Image.open(path).convert("RGB"))[0, :, 0].tolist() == [255, 255, 0, 255]


def test_alpha_onto_background(tmp_path):
    rgba = np.concatenate([RGB, ALPHA[:, :, None]], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = np.asarray(load_image(tmp_path / "a.png", background=(255, 255, 255))).astype(float)
    a = ALPHA[:, :, None] / 255.0
    np.testing.assert_allclose(got, a * RGB + (1 - a) * 255.0, atol=1.0)


def test_exif_orientation_6_rotates(tmp_path):
    w, h = 48, 24
    stored = np.zeros((h, w, 3), np.uint8)
    stored[:, :] = (0, 0, 255)
    stored[:8, :8] = (255, 0, 0)  # marked top-left corner as stored
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", "JPEG", quality=95, exif=exif.tobytes())

    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.size == (h, w)  # width and height swapped
    a = np.asarray(loaded).astype(int)
    # clockwise rotation moves the stored top-left corner to the displayed top-right corner
    assert a[3, h - 4, 0] > 200 and a[3, h - 4, 2] < 60
    assert a[3, 3, 0] < 60 and a[3, 3, 2] > 200
    assert a[w - 4, h - 4, 2] > 200


# ---------------------------------------------------------------- bad files: build(path, monkeypatch) -> path


def _missing(p, mp):
    return p


def _zero_byte(p, mp):
    p.write_bytes(b"")
    return p


def _truncated(fmt):
    def build(p, mp):
        data = _png_bytes(Image.fromarray(RGB).resize((64, 48)), fmt)
        p.write_bytes(data[: len(data) // 2])
        return p

    return build


def _corrupt_png(p, mp):
    data = bytearray(_png_bytes(Image.fromarray(RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8))))
    data[200:260] = bytes(60)
    p.write_bytes(bytes(data))
    return p


def _text_as_png(p, mp):
    p.write_text("this is not an image\n", encoding="utf-8")
    return p


def _postscript(p, mp):
    p.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    return p


def _directory(p, mp):
    p.mkdir()
    return p


def _bomb_own_limit(p, mp):
    Image.fromarray(RGB).save(p, "PNG")  # 16x12 = 192 pixels
    mp.setattr(images_mod, "MAX_IMAGE_PIXELS", 100)
    return p


def _bomb_pillow_error(p, mp):
    Image.fromarray(RGB).save(p, "PNG")  # 192 > 2 * 64: Pillow raises DecompressionBombError in open()
    mp.setattr(Image, "MAX_IMAGE_PIXELS", 64)
    return p


def _bomb_pillow_warning(p, mp):
    Image.fromarray(RGB).save(p, "PNG")  # 100 < 192 <= 200: Pillow only warns; we refuse
    mp.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    return p


def _permission_denied(p, mp):
    Image.fromarray(RGB).save(p, "PNG")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    mp.setattr(images_mod.Image, "open", denied)  # root ignores file modes, so simulate what open() raises
    return p


def _broken_symlink(p, mp):
    p.symlink_to(p.parent / "gone.png")
    return p


BAD = [
    ("missing.png", _missing, "no such file"),
    ("empty.jpg", _zero_byte, "empty (0 bytes)"),
    ("half.jpg", _truncated("JPEG"), "truncated"),
    ("half.png", _truncated("PNG"), "truncated"),
    ("half.gif", _truncated("GIF"), "truncated"),
    ("corrupt.png", _corrupt_png, "cannot decode"),
    ("notes.png", _text_as_png, "not an image"),
    ("drawing.eps", _postscript, "not an image"),
    ("a folder.png", _directory, "is a folder"),
    ("bomb.png", _bomb_own_limit, "decompression bomb"),
    ("bomb2.png", _bomb_pillow_error, "decompression bomb"),
    ("bomb3.png", _bomb_pillow_warning, "decompression bomb"),
    ("locked.png", _permission_denied, "permission denied"),
    ("link.png", _broken_symlink, "broken symbolic link"),
    ("café ☕.jpg", _truncated("JPEG"), "truncated"),
]


@pytest.mark.parametrize(("name", "build", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_file_raises_one_line_naming_it(tmp_path, monkeypatch, name, build, reason):
    path = build(tmp_path / name, monkeypatch)
    with pytest.raises(OvclipError) as info:
        load_image(path)
    msg = str(info.value)
    assert name in msg
    assert reason in msg
    assert "\n" not in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: file modes do not stop reads")
def test_unreadable_file_real_permissions(tmp_path):
    path = tmp_path / "locked.png"
    Image.fromarray(RGB).save(path)
    path.chmod(0)
    with pytest.raises(OvclipError, match="permission denied"):
        load_image(path)


def test_loaded_image_is_detached_from_file(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(RGB).save(path)
    img = load_image(path)
    path.unlink()
    np.testing.assert_array_equal(np.asarray(img), RGB)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("a.JPG", True), ("b.jpeg", True), ("c.Png", True), ("d.webp", True), ("e.tiff", True), ("f.txt", False)]
    + [(".hidden.png", False), ("._mac.jpg", False), ("noext", False)],
)
def test_is_image_name(name, ok):
    assert is_image_name(name) is ok
