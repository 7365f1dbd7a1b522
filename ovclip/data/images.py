"""Robust image loading: one function that turns a file into the RGB image CLIP preprocessing expects,
or into one clear `OvclipError` naming the file and what to do.

Colour handling follows OpenAI CLIP / open_clip (`image.convert("RGB")`) and transformers' own
`image_utils.load_image` (EXIF transpose, then `convert("RGB")`): an alpha channel is dropped, a palette
image takes its palette colours (also for the transparent index). Two deliberate departures:

- 16-bit grayscale (`I;16*`, and `I`, read as 0..65535) is scaled to 8 bits (value / 257, rounded);
  Pillow's own `convert` clips every value above 255 to white.
- `background=` composites transparency onto a colour first, which is what transformers >= 4.5x's
  `CLIPImageProcessor` does with a PIL RGBA image (onto white); off by default.

With the default, the file path gives what transformers' `load_image` + `CLIPImageProcessor` give:
`ovclip.preprocess` then composites only what the reference composites after `load_image` (a palette
image's transparent index survives `convert("RGB")` as `info["transparency"]` and turns white there);
tests/test_preprocess_parity.py compares both paths on every image kind.

Only raster formats are decoded (no EPS/PDF-like plugins that call external programs), decoding is by
content (a PNG named `.jpg` is fine), the whole first frame is decoded so truncation is caught here,
and images above `MAX_IMAGE_PIXELS` are refused before their pixels are decoded.
"""

from __future__ import annotations

import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ovclip.errors import OvclipError

# Same default as Pillow's Image.MAX_IMAGE_PIXELS (a 1024 MiB RGB image); lower it to be stricter.
MAX_IMAGE_PIXELS = 89_478_485
# Pillow formats we decode: plain raster formats only. (JPEG includes multi-picture MPO files.)
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA")
# File name endings image folders pick up (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".mpo",
        ".png",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
    }
)


def is_image_name(path: str | Path) -> bool:
    """True for a non-hidden file name with a known image extension (any case)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check_path(p: Path) -> None:
    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise OvclipError(f"{p}: broken symbolic link; point it at an existing image or remove it") from None
        raise OvclipError(f"{p}: no such file; check the path") from None
    except PermissionError:
        raise OvclipError(f"{p}: permission denied; make the file and its folders readable") from None
    except OSError as e:
        raise OvclipError(f"{p}: cannot access the file ({_one_line(e.strerror or e)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise OvclipError(f"{p}: is a folder, not an image file; pass an image file")
    if not stat.S_ISREG(st.st_mode):
        raise OvclipError(f"{p}: is not a regular file (device, pipe or socket); pass an image file")
    if st.st_size == 0:
        raise OvclipError(f"{p}: file is empty (0 bytes); re-copy or remove it")


def _gray16_to_8bit(img: Image.Image) -> Image.Image:
    a = np.asarray(img).astype(np.float64)
    a8 = np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    return Image.fromarray(a8, mode="L")


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.getbands() or img.info.get("transparency") is not None


def to_rgb(img: Image.Image, background: tuple[int, int, int] | None = None) -> Image.Image:
    """Convert a decoded image of any Pillow mode to RGB as described in the module docstring."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = _gray16_to_8bit(img)
    if background is not None and _has_alpha(img):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def _orient(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: the pixels are still good, keep them as stored
        return img.copy()


def load_image(path: str | Path, *, background: tuple[int, int, int] | None = None) -> Image.Image:
    """Open, fully decode and orient one image file; return an RGB `PIL.Image` detached from the file.

    Raises `OvclipError` (one line, naming the file) for a missing, empty, unreadable, truncated,
    corrupt, non-image or too large (decompression bomb) file.
    """
    p = Path(path)
    _check_path(p)
    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice its limit; treat that as the refusal it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p, formats=FORMATS) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise OvclipError(
                        f"{p}: {w}x{h} = {w * h:,} pixels exceeds the limit of {MAX_IMAGE_PIXELS:,} "
                        "(possible decompression bomb); downscale the image or remove it"
                    )
                img.load()  # decodes the first frame completely: catches truncation and corrupt data
                return to_rgb(_orient(img), background)
    except OvclipError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise OvclipError(
            f"{p}: refused as a possible decompression bomb ({_one_line(e)}); downscale the image or remove it"
        ) from None
    except UnidentifiedImageError:
        raise OvclipError(
            f"{p}: not an image in a supported format ({', '.join(FORMATS)}); convert it or remove it"
        ) from None
    except PermissionError:
        raise OvclipError(f"{p}: permission denied; make the file readable") from None
    except FileNotFoundError:
        raise OvclipError(f"{p}: no such file (it disappeared while being read); check the path") from None
    except MemoryError:
        raise OvclipError(f"{p}: out of memory while decoding; downscale the image or remove it") from None
    except Exception as e:  # OSError "image file is truncated", SyntaxError "broken PNG", zlib, struct ...
        reason = _one_line(e) or type(e).__name__
        raise OvclipError(
            f"{p}: cannot decode the image ({reason}); the file is truncated or corrupt, re-copy or remove it"
        ) from None


def existing_folder(path: str | Path, expected: str) -> Path:
    """`path` as a folder that exists; otherwise a one-line error (`expected` says what to pass instead)."""
    root = Path(path)
    if not root.exists():
        raise OvclipError(f"image folder {root} not found; check the path")
    if not root.is_dir():
        raise OvclipError(f"{root} is a file, not a folder; pass {expected}")
    return root
