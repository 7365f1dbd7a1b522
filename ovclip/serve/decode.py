"""Image bytes from a request -> an RGB (or plain grayscale 'L') image, or a `RequestError` that says which image
and what is wrong.

The same rules as `ovclip.data.images.load_image` (raster formats only, decoded by content, the whole first
frame decoded so truncation is caught, EXIF orientation applied, `to_rgb` for every Pillow mode), with the
server's limits on bytes and pixels checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from ovclip.data.images import FORMATS, to_rgb
from ovclip.serve.errors import RequestError, bad_request, too_large


@dataclass(frozen=True)
class Limits:
    """What one request may carry; anything over is refused with 413 before it is decoded."""

    max_image_bytes: int = 16 * 2**20
    max_image_pixels: int = 40_000_000
    max_images: int = 256  # per request
    max_body_bytes: int = 256 * 2**20
    max_texts: int = 1024
    max_labels: int = 1000


def decode_image(data: bytes, what: str, limits: Limits) -> Image.Image:
    """Decode one uploaded image; `what` names it in errors (e.g. "file[2] 'cat.png'" or "images[0]")."""
    if not data:
        raise bad_request(f"{what}: empty (0 bytes); send the image file's bytes", kind="not_an_image")
    if len(data) > limits.max_image_bytes:
        raise too_large(
            f"{what}: {len(data):,} bytes is over the server's limit of {limits.max_image_bytes:,} bytes per image; "
            "downscale or recompress it"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                w, h = img.size
                if w * h > limits.max_image_pixels:
                    raise too_large(
                        f"{what}: {w}x{h} = {w * h:,} pixels is over the server's limit of "
                        f"{limits.max_image_pixels:,}; downscale it"
                    )
                img.load()
                img = _orient(img)
                # plain grayscale stays one band (`ovclip.serve.pixels` resizes it once); all else becomes RGB
                return img if img.mode == "L" and img.info.get("transparency") is None else to_rgb(img)
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(
            415, "not_an_image", f"{what}: not an image in a supported format ({', '.join(FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large(f"{what}: refused as a possible decompression bomb; downscale it") from None
    except Exception as e:  # truncated or corrupt data: OSError, SyntaxError, zlib errors, ...
        reason = " ".join(str(e).split()) or type(e).__name__
        message = f"{what}: cannot decode the image ({reason}); it is truncated or corrupt"
        raise bad_request(message, "not_an_image") from None


def _orient(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the pixels as stored
        return img.copy()
