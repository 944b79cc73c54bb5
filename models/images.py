"""Decode, validate and convert uploaded images: the one door every image comes through.

Every byte here comes from an untrusted client. The rules, in order: refuse by size, then by
content (magic bytes), then by what the header declares (pixels, frames) before any pixel is
decoded; decode only the first frame under a time budget; re-check the pixel count of what
was actually decoded; and turn every failure Pillow can produce into an ImageError, so hostile
input is answered 4xx and never reaches the HTTP layer as an unexplained 500.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import struct
import time
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin

logger = logging.getLogger(__name__)

# Allowlist by content: the magic bytes decide, never the Content-Type header or a file name.
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("JPEG", b"\xff\xd8\xff", 0),
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("WEBP", b"WEBP", 8),  # RIFF....WEBP
)
SUPPORTED_FORMATS: tuple[str, ...] = tuple(name for name, _, _ in _SIGNATURES)

# Pillow decompresses PNG text (tEXt/zTXt/iTXt) and ICC (iCCP) chunks while *opening* a file,
# before any pixel check of ours can run. Each chunk's decompressed size is capped at 1 MiB (an
# ICC profile still fits) and all text together at 4 MiB (Pillow's own default is 64 MiB).
PNG_MAX_TEXT_CHUNK = 1024 * 1024
PNG_MAX_TEXT_MEMORY = 4 * 1024 * 1024

# What Pillow's parsers and C decoders raise on hostile bytes (truncation, bad lengths, broken
# tables, impossible values). zlib.error escapes some PNG paths; ArithmeticError covers divisions
# by zero and overflows on absurd header fields.
_DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    TypeError,
    KeyError,
    ArithmeticError,
    zlib.error,
)

_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(Exception):
    """Base of every image input error; the message is safe to show to the client."""


class ImageTooLarge(ImageError):
    """The encoded bytes, the pixel count or the frame count exceed the configured limits."""


class UnsupportedImageFormat(ImageError):
    """The bytes are not one of the allowed formats (JPEG, PNG, WebP)."""


class CorruptImage(ImageError):
    """The bytes claim an allowed format but cannot be decoded (truncated, damaged)."""


class DecodeTimeout(CorruptImage):
    """Decoding ran past `ImageLimits.max_decode_seconds`: answered 400 like any undecodable image."""


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits; bytes, declared pixels and declared frames are checked before decoding."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    # Only the first frame is ever decoded; the cap refuses animations and video-like files
    # outright rather than silently reading one frame of something that is not a picture.
    max_frames: int = 1000
    max_decode_seconds: float = 10.0


def sniff_format(data: bytes) -> str | None:
    """Return the image format named by the leading bytes, or None if not allowed."""
    for name, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if name == "WEBP" and data[:4] != b"RIFF":
                continue
            return name
    return None


def harden_pillow() -> None:
    """Apply this module's PNG chunk limits to Pillow's process-wide settings, never loosening them."""
    # Called at decode time, not import time: importing this module must not change Pillow for
    # other code in the process that merely imports it.
    PngImagePlugin.MAX_TEXT_CHUNK = min(PngImagePlugin.MAX_TEXT_CHUNK, PNG_MAX_TEXT_CHUNK)
    PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, PNG_MAX_TEXT_MEMORY)


SCALE_KEY = "decoded_scale"
"""`Image.info` key: original size / decoded size, when a JPEG was decoded at a reduced scale."""


def original_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as sent, also when `min_side` decoded it smaller."""
    scale = float(img.info.get(SCALE_KEY, 1.0))
    return round(img.width * scale), round(img.height * scale)


def decode_image(
    data: bytes,
    mode: str = "RGB",
    limits: ImageLimits | None = None,
    *,
    deadline: float | None = None,
    min_side: int | None = None,
) -> Image.Image:
    """Decode bytes into a loaded, upright image in `mode`, enforcing `limits`.

    `deadline` (a time.monotonic() value) lets a caller share one decode budget between the
    images of a request; the per-image `limits.max_decode_seconds` applies in any case.
    `min_side`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, Pillow's `draft`)
    as long as its shorter side stays at least this long; `original_size` gives the size sent.
    """
    limits = limits or ImageLimits()
    own_deadline = time.monotonic() + limits.max_decode_seconds
    deadline = own_deadline if deadline is None else min(deadline, own_deadline)
    if not data:
        raise CorruptImage("empty image")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageFormat(
            f"unsupported image format; allowed: {', '.join(f.lower() for f in SUPPORTED_FORMATS)}"
        )
    harden_pillow()
    name = fmt.lower()
    try:
        with warnings.catch_warnings():
            # Hostile files make Pillow warn (malformed APNG, corrupt EXIF, bomb warnings): the
            # outcome is decided by the checks here, not by whatever warning filter is active.
            warnings.simplefilter("ignore")
            return _decode(data, fmt, mode, limits, deadline, min_side)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own, looser cap (for headers far past ours) fired while the file was opened.
        raise ImageTooLarge(f"{name} image declares too many pixels; the limit is {limits.max_pixels}") from exc
    except MemoryError as exc:
        raise ImageTooLarge(f"{name} image is too large to decode") from exc
    except ValueError as exc:
        # Pillow names the setting when a PNG text or ICC chunk inflates past our caps.
        if "MAX_TEXT" in str(exc):
            raise ImageTooLarge(f"{name} image metadata chunks exceed the size limit") from exc
        raise CorruptImage(f"cannot decode {name} image: truncated or damaged") from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"cannot decode {name} image: truncated or damaged") from exc
    except Exception as exc:
        # Not a known failure mode: still the client's bytes that caused it, so 400 rather than a
        # 500, but logged with the traceback because it may be a bug worth a look.
        logger.warning("unexpected %s decoding a %s image", type(exc).__name__, name, exc_info=True)
        raise CorruptImage(f"cannot decode {name} image") from exc


def _decode(
    data: bytes, fmt: str, mode: str, limits: ImageLimits, deadline: float, min_side: int | None = None
) -> Image.Image:
    declared = _webp_canvas(data) if fmt == "WEBP" else None
    if declared is not None:
        # libwebp allocates the whole canvas when the file is opened, so check before opening.
        _check_pixels(declared, limits)
    img: Image.Image = Image.open(_DeadlineReader(data, deadline, limits.max_decode_seconds), formats=[fmt])
    _check_pixels(img.size, limits)
    frames = int(getattr(img, "n_frames", 1))  # declared by the header (acTL, ANIM/ANMF, MPF)
    if frames > limits.max_frames:
        raise ImageTooLarge(f"image has {frames} frames; the limit is {limits.max_frames}")
    declared_width = img.width
    if min_side is not None and fmt == "JPEG" and min(img.size) > 2 * min_side:
        # Decoding a 4000x3000 photo whole to shrink it to 256 pixels wastes most of the work:
        # the JPEG decoder can reduce by 2, 4 or 8 while it decodes (4x faster at 2560x1920).
        ratio = min_side / min(img.size)
        img.draft(img.mode, (math.ceil(img.width * ratio), math.ceil(img.height * ratio)))
    img.load()  # the first frame only
    _check_deadline(deadline, limits.max_decode_seconds)
    _check_pixels(img.size, limits)  # what was decoded, not only what the header claimed
    scale = declared_width / img.width
    img = _upright(img)
    _check_pixels(img.size, limits)
    img = to_mode(img, mode)
    if scale != 1.0:
        img.info[SCALE_KEY] = scale
    return img


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise CorruptImage("image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")


def _check_deadline(deadline: float, budget: float) -> None:
    if time.monotonic() > deadline:
        raise DecodeTimeout(f"decoding the image took longer than the {budget:g}s limit")


class _DeadlineReader(io.BytesIO):
    """The image bytes as a file whose reads fail once the decode deadline has passed.

    Pillow's decoders run in C and cannot be interrupted safely in-process, but they pull their
    input in blocks (64 KiB) through read(): failing a read stops a slow decode between blocks.
    A block can still expand to a lot of work (zlib inflates ~1000x), so the pixel cap stays the
    real bound on time and memory; this budget catches slow decodes of in-limit images.
    """

    def __init__(self, data: bytes, deadline: float, budget: float) -> None:
        super().__init__(data)
        self._deadline = deadline
        self._budget = budget

    def read(self, size: int | None = -1, /) -> bytes:
        """Read like BytesIO, after checking the deadline."""
        _check_deadline(self._deadline, self._budget)
        return super().read(size)


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP file declares (VP8X, VP8L or VP8 header), or None if unreadable."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None  # libwebp rejects it when opening


def _upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; a broken EXIF block means no orientation."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        # EXIF is metadata and broken blocks are common in real photos: keep the pixels as stored.
        return img
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return img.transpose(method) if method is not None else img


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


def png_base64(img: Image.Image) -> str:
    """A PIL image as base64-encoded PNG bytes (ASCII), for JSON results."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


MIN_CONTRAST = 0.2  # ink peaks below this are treated as faint, not stretched into noise


def ink_map(pixels: np.ndarray) -> np.ndarray:
    """Greyscale pixels in [0, 1] -> ink in [0, 1]: the contrast against the paper, either polarity.

    The paper is the median of the border: ink is darker than light paper and lighter than a
    dark board, so both give the same map; it is scaled so the strongest ink is 1 (ink fainter
    than MIN_CONTRAST is scaled as if it were that strong).
    """
    paper = float(np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])))
    polarity = 1.0 if paper >= 0.5 else -1.0
    ink = np.clip(polarity * (paper - pixels), 0.0, None)
    ink /= max(float(ink.max()), MIN_CONTRAST)
    return ink
