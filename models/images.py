"""Decode, validate and convert uploaded images: the one door every image comes through."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Allowlist by content: the magic bytes decide, never the Content-Type header or a file name.
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("JPEG", b"\xff\xd8\xff", 0),
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("WEBP", b"WEBP", 8),  # RIFF....WEBP
)
SUPPORTED_FORMATS: tuple[str, ...] = tuple(name for name, _, _ in _SIGNATURES)


class ImageError(Exception):
    """Base of every image input error; the message is safe to show to the client."""


class ImageTooLarge(ImageError):
    """The encoded bytes or the declared pixel count exceed the configured limits."""


class UnsupportedImageFormat(ImageError):
    """The bytes are not one of the allowed formats (JPEG, PNG, WebP)."""


class CorruptImage(ImageError):
    """The bytes claim an allowed format but cannot be decoded (truncated, damaged)."""


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits, checked before the pixels are decoded."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


def sniff_format(data: bytes) -> str | None:
    """Return the image format named by the leading bytes, or None if not allowed."""
    for name, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if name == "WEBP" and data[:4] != b"RIFF":
                continue
            return name
    return None


def decode_image(data: bytes, mode: str = "RGB", limits: ImageLimits | None = None) -> Image.Image:
    """Decode bytes into a loaded, upright image in `mode`, enforcing `limits`."""
    limits = limits or ImageLimits()
    if not data:
        raise CorruptImage("empty image")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageFormat(
            f"unsupported image format; allowed: {', '.join(f.lower() for f in SUPPORTED_FORMATS)}"
        )
    with warnings.catch_warnings():
        # Our own pixel limit below is the authority; Pillow's global bomb check only warns.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data), formats=[fmt])
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge("image declares too many pixels") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise CorruptImage(f"cannot read {fmt.lower()} image") from exc
        width, height = img.size
        if width <= 0 or height <= 0:
            raise CorruptImage("image has no pixels")
        if width * height > limits.max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
            )
        try:
            img.load()  # animated images: the first frame only
            img = ImageOps.exif_transpose(img)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge("image declares too many pixels") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptImage(f"cannot decode {fmt.lower()} image: truncated or damaged") from exc
    return to_mode(img, mode)


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to `mode`, flattening transparency onto white and scaling 16-bit to 8-bit."""
    if img.mode == mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's I->L conversion clips at 255 instead of scaling; scale by the bit depth.
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" or img.mode.endswith("A") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert(mode)


def encode_png(img: Image.Image) -> bytes:
    """Encode an image as PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
