"""A malformed-input corpus for the image routes: each case with the HTTP statuses it may get.

    python -m tests.security.corpus OUT_DIR     # writes every case as a file, plus manifest.json

Everything is built in memory from seeded synthetic pictures, in a few seconds. Statuses:
200 the image decodes (a payload riding along is ignored), 400 it claims an allowed format
but cannot be decoded, 413 it is over a limit (bytes, pixels, frames, metadata chunks),
415 it is not JPEG, PNG or WebP by content, whatever its Content-Type says.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import random
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from models.images import ImageLimits

OK = frozenset({200})
CORRUPT = frozenset({400})
TOO_LARGE = frozenset({413})
UNSUPPORTED = frozenset({415})

# The limits the served app uses: deployments/serve_config.yaml sets the ImageLimits defaults.
LIMITS = ImageLimits()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BOMB_BYTES = 50 * 1024 * 1024  # what the metadata bombs inflate to

_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/tiff": ".tiff",
    "image/bmp": ".bmp",
    "image/svg+xml": ".svg",
    "image/vnd.adobe.photoshop": ".psd",
    "application/pdf": ".pdf",
    "application/postscript": ".eps",
    "video/mp4": ".mp4",
}


@dataclass(frozen=True)
class CorpusCase:
    """One request body: what it is, the Content-Type it is sent with, the statuses it may get."""

    name: str
    data: bytes
    content_type: str
    expected: frozenset[int]

    @property
    def filename(self) -> str:
        """A file name for the case, its extension from the content type."""
        return self.name + _EXTENSIONS.get(self.content_type, ".bin")


def generate(out_dir: Path | None = None) -> list[CorpusCase]:
    """Every case of the corpus, written to `out_dir` (one file each, plus manifest.json) if given."""
    cases = list(_cases())
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for case in cases:
            (out_dir / case.filename).write_bytes(case.data)
        manifest = [
            {
                "name": c.name,
                "file": c.filename,
                "content_type": c.content_type,
                "bytes": len(c.data),
                "expected": sorted(c.expected),
            }
            for c in cases
        ]
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return cases


@functools.cache
def _cases() -> tuple[CorpusCase, ...]:
    # Built once per process: unit and integration tests share it and nothing mutates it.
    cases = (
        *_truncations(),
        *_bodies(),
        *_pixel_bombs(),
        *_chunk_bombs(),
        *_frames(),
        *_valid(),
        *_polyglots(),
        *_outside_allowlist(),
        *_damaged_headers(),
    )
    names = [c.name for c in cases]
    if len(names) != len(set(names)):
        raise RuntimeError("corpus case names must be unique")
    return cases


# ---- building blocks -------------------------------------------------------------------


def picture(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A small RGB picture: smooth gradients (compress well) with a noisy patch (do not)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    arr = arr.astype(np.uint8)
    arr[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(
        0, 256, (height // 2 - height // 4, width // 2 - width // 4, 3), dtype=np.uint8
    )
    return Image.fromarray(arr)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """Encode a PIL image to bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes, length: int | None = None) -> bytes:
    """One PNG chunk with a valid CRC; `length` overrides the declared length (a lie)."""
    declared = len(payload) if length is None else length
    return struct.pack(">I", declared) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The (offset, type, payload) of each chunk of a well-formed PNG."""
    chunks, offset = [], len(PNG_MAGIC)
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        chunks.append((offset, kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def ihdr(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """An IHDR chunk (colour 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA)."""
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0))


def build_png(header: bytes, *chunks: bytes, idat: bytes = b"") -> bytes:
    """Magic, IHDR, extra chunks, one IDAT (zlib of `idat`) and IEND."""
    return PNG_MAGIC + header + b"".join(chunks) + png_chunk(b"IDAT", zlib.compress(idat)) + png_chunk(b"IEND", b"")


def insert_chunks(png: bytes, *chunks: bytes) -> bytes:
    """A valid PNG with `chunks` inserted right after IHDR."""
    after_ihdr = len(PNG_MAGIC) + 25
    return png[:after_ihdr] + b"".join(chunks) + png[after_ihdr:]


def zeros_deflated(size: int) -> bytes:
    """zlib of `size` zero bytes, compressed piecewise so the zeros never sit in memory at once."""
    compressor = zlib.compressobj(9)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block[: min(len(block), size - done)]) for done in range(0, size, len(block))]
    return b"".join(parts) + compressor.flush()


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(marker, offset) of each JPEG header segment, from SOI up to and including SOS."""
    segments, offset = [(0xD8, 0)], 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        segments.append((marker, offset))
        if marker == 0xDA:
            break
        (length,) = struct.unpack_from(">H", data, offset + 2)
        offset += 2 + length
    return segments


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with the size in its frame header (SOFn) replaced: what it declares, not what it holds."""
    offset = next(off for marker, off in jpeg_segments(data) if marker in _SOF_MARKERS)
    return data[: offset + 5] + struct.pack(">HH", height, width) + data[offset + 9 :]


def _webp_with_exif() -> bytes:
    # EXIF makes Pillow write the extended (VP8X) header, which carries the canvas size.
    exif = Image.Exif()
    exif[0x010E] = "canvas"
    return encode(picture(32, 32), "WEBP", exif=exif)


# ---- the cases -------------------------------------------------------------------------


def _truncations() -> Iterator[CorpusCase]:
    png = encode(picture(), "PNG")
    chunks = png_chunks(png)
    idat_offset, _, idat = next(c for c in chunks if c[1] == b"IDAT")
    idat_data_end = idat_offset + 8 + len(idat)
    idat_end = idat_data_end + 4
    # Inside the magic (415: not a PNG any more), inside IHDR, at and inside the IDAT header,
    # through the pixel data (400). The zlib trailer (last bytes of IDAT data) is left out: a
    # decoder that has every row may or may not insist on the checksum.
    png_offsets = [1, 4, 7, 8, 10, 12, 15, 16, 20, 24, 28, 32, 33, 37, idat_offset + 8]
    png_offsets += [idat_offset + 8 + len(idat) * k // 10 for k in range(1, 10)]
    png_offsets += [idat_data_end - 12]
    for offset in sorted(set(png_offsets)):
        expected = UNSUPPORTED if offset < len(PNG_MAGIC) else CORRUPT
        yield CorpusCase(f"png_truncated_at_{offset}", png[:offset], "image/png", expected)
    # Cut after all pixel data: only the IEND trailer is missing or partial, the picture is whole.
    for offset in (idat_end, idat_end + 4, idat_end + 8):
        yield CorpusCase(f"png_truncated_in_trailer_at_{offset}", png[:offset], "image/png", OK)

    jpeg = encode(picture(), "JPEG", quality=85)
    header_offsets = [1, 2, 3, 4, 6, 10, 20]
    for _, offset in jpeg_segments(jpeg)[1:]:
        header_offsets += [offset, offset + 1, offset + 3, offset + 6]
    scan_start = jpeg_segments(jpeg)[-1][1]
    scan = [scan_start + (len(jpeg) - scan_start) * k // 10 for k in range(1, 10)]
    # Pillow insists on the end-of-image marker, so even the last missing byte is corrupt.
    for offset in sorted({o for o in header_offsets + scan + [len(jpeg) - 2, len(jpeg) - 1] if 0 < o < len(jpeg)}):
        expected = UNSUPPORTED if offset < 3 else CORRUPT
        yield CorpusCase(f"jpeg_truncated_at_{offset}", jpeg[:offset], "image/jpeg", expected)

    webp = encode(picture(), "WEBP", quality=80)
    for offset in (4, 11, 12, 16, 20, 30, len(webp) // 2, len(webp) - 1):
        expected = UNSUPPORTED if offset < 12 else CORRUPT
        yield CorpusCase(f"webp_truncated_at_{offset}", webp[:offset], "image/webp", expected)


def _bodies() -> Iterator[CorpusCase]:
    yield CorpusCase("empty_body", b"", "image/png", CORRUPT)
    rng = random.Random(20240601)
    for size in (1, 2, 3, 7, 15, 100, 1000, 10_000, 100_000):
        data = rng.randbytes(size)
        yield CorpusCase(f"random_{size}_bytes", data, "application/octet-stream", UNSUPPORTED)
    for kind, magic, content_type in (
        ("png", PNG_MAGIC, "image/png"),
        ("jpeg", b"\xff\xd8\xff", "image/jpeg"),
        ("webp", b"RIFF\x00\x10\x00\x00WEBPVP8 ", "image/webp"),
    ):
        yield CorpusCase(f"{kind}_magic_then_random", magic + rng.randbytes(4096), content_type, CORRUPT)
    yield CorpusCase("all_zero_bytes", bytes(4096), "image/png", UNSUPPORTED)
    yield CorpusCase("all_ff_bytes", b"\xff" * 4096, "image/jpeg", UNSUPPORTED)
    # Over the per-image byte cap, though under the 32 MiB body cap: refused before decoding.
    big = insert_chunks(encode(picture(8, 8), "PNG"), png_chunk(b"tEXt", b"pad\0" + bytes(LIMITS.max_bytes)))
    yield CorpusCase("png_over_the_byte_limit", big, "image/png", TOO_LARGE)


def _pixel_bombs() -> Iterator[CorpusCase]:
    # Headers that declare far more pixels than the file holds: refused from the header alone.
    yield CorpusCase(
        "png_declares_100000x100000", build_png(ihdr(100_000, 100_000), idat=bytes(64)), "image/png", TOO_LARGE
    )
    side = int(LIMITS.max_pixels**0.5) + 100  # just over the pixel cap, under Pillow's own
    yield CorpusCase(f"png_declares_{side}x{side}", build_png(ihdr(side, side), idat=bytes(64)), "image/png", TOO_LARGE)
    yield CorpusCase("png_declares_2147483647x1", build_png(ihdr(2**31 - 1, 1), idat=bytes(64)), "image/png", TOO_LARGE)
    # A real 100-megapixel 1-bit PNG: every byte present, ~12 KB compressed, 100 MB decoded.
    yield CorpusCase("png_1bit_10000x10000", encode(Image.new("1", (10_000, 10_000)), "PNG"), "image/png", TOO_LARGE)
    jpeg = encode(picture(), "JPEG", quality=85)
    yield CorpusCase("jpeg_declares_65500x65500", jpeg_with_size(jpeg, 65_500, 65_500), "image/jpeg", TOO_LARGE)
    yield CorpusCase("jpeg_declares_8000x6000", jpeg_with_size(jpeg, 8000, 6000), "image/jpeg", TOO_LARGE)
    vp8x = _webp_with_exif()
    if vp8x[12:16] != b"VP8X":
        raise RuntimeError("Pillow no longer writes an extended WebP header for EXIF")
    canvas = struct.pack("<I", 10_000 - 1)[:3] * 2
    yield CorpusCase("webp_vp8x_declares_10000x10000", vp8x[:24] + canvas + vp8x[30:], "image/webp", TOO_LARGE)
    lossless = encode(picture(32, 32), "WEBP", lossless=True)
    bits = (16_383) | (16_383 << 14) | (struct.unpack_from("<I", lossless, 21)[0] & ~((1 << 28) - 1))
    yield CorpusCase(
        "webp_vp8l_declares_16384x16384",
        lossless[:21] + struct.pack("<I", bits & 0xFFFFFFFF) + lossless[25:],
        "image/webp",
        TOO_LARGE,
    )


def _chunk_bombs() -> Iterator[CorpusCase]:
    bomb = zeros_deflated(BOMB_BYTES)  # ~50 KB that inflate to 50 MB
    png = encode(picture(16, 16), "PNG")

    def with_chunks(*chunks: bytes) -> bytes:
        return insert_chunks(png, *chunks)

    yield CorpusCase(
        "png_ztxt_inflates_to_50MB", with_chunks(png_chunk(b"zTXt", b"Comment\0\0" + bomb)), "image/png", TOO_LARGE
    )
    yield CorpusCase(
        "png_itxt_inflates_to_50MB",
        with_chunks(png_chunk(b"iTXt", b"Comment\0\x01\x00en\0Comment\0" + bomb)),
        "image/png",
        TOO_LARGE,
    )
    yield CorpusCase(
        "png_iccp_inflates_to_50MB", with_chunks(png_chunk(b"iCCP", b"icc\0\0" + bomb)), "image/png", TOO_LARGE
    )
    # Each text chunk under the per-chunk cap, together over the total text cap.
    piece = zeros_deflated(900 * 1024)
    many = [png_chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + piece) for i in range(8)]
    yield CorpusCase("png_8_ztxt_chunks_inflate_to_7MB", with_chunks(*many), "image/png", TOO_LARGE)
    # The same bomb after the pixel data: read while loading, not while opening.
    tail = png.rindex(b"IEND") - 4
    late = png[:tail] + png_chunk(b"zTXt", b"Comment\0\0" + bomb) + png[tail:]
    yield CorpusCase("png_ztxt_bomb_after_idat", late, "image/png", TOO_LARGE)
    # Declared lengths the file does not hold: the reader must notice the bytes are missing.
    lie = png_chunk(b"tEXt", b"Comment\0" + bytes(100), length=BOMB_BYTES)[:-4]
    yield CorpusCase("png_text_declares_50MB_holds_100B", with_chunks(lie), "image/png", CORRUPT)
    chunks = png_chunks(png)
    idat_offset = next(off for off, kind, _ in chunks if kind == b"IDAT")
    # An IDAT that declares gigabytes around a whole image: the reader takes what is there
    # (all rows decode) and must neither allocate the declared size nor wait for it.
    for length, label in ((2**31 - 1, "2GB"), (2**32 - 1, "4GB")):
        lied = png[:idat_offset] + struct.pack(">I", length) + png[idat_offset + 4 :]
        yield CorpusCase(f"png_idat_declares_{label}_holds_whole_image", lied, "image/png", OK)


def _alternating_frames(count: int) -> list[Image.Image]:
    # Consecutive frames differ, so encoders cannot merge them into one.
    return [Image.new("RGB", (2, 2), (255 * (i % 2), 64, 128)) for i in range(count)]


def _gif_with_frames(count: int) -> bytes:
    """A 1x1 GIF with `count` frames, written by hand (an encoder would take seconds)."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = b"!\xf9\x04\x00\x01\x00\x00\x00" + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02\x02D\x01\x00"
    return header + loop + frame * count + b";"


def _frames() -> Iterator[CorpusCase]:
    over = LIMITS.max_frames + 1
    yield CorpusCase("gif_10000_frames", _gif_with_frames(10_000), "image/gif", UNSUPPORTED)
    frames = _alternating_frames(over)
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    yield CorpusCase(f"apng_{over}_frames", apng, "image/png", TOO_LARGE)
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    yield CorpusCase(f"webp_animated_{over}_frames", webp, "image/webp", TOO_LARGE)
    # An APNG that holds 3 frames but declares a million in its acTL chunk.
    small = encode(frames[0], "PNG", save_all=True, append_images=frames[1:3])
    actl = next((off, payload) for off, kind, payload in png_chunks(small) if kind == b"acTL")
    lying = small[: actl[0]] + png_chunk(b"acTL", struct.pack(">I", 1_000_000) + actl[1][4:]) + small[actl[0] + 20 :]
    yield CorpusCase("apng_declares_1000000_frames", lying, "image/png", TOO_LARGE)
    yield CorpusCase("apng_3_frames", small, "image/png", OK)
    yield CorpusCase(
        "webp_animated_3_frames",
        encode(frames[0], "WEBP", save_all=True, append_images=frames[1:3], lossless=True),
        "image/webp",
        OK,
    )


def _png16_rgb(width: int = 24, height: int = 16) -> bytes:
    """A 48-bit RGB PNG, written by hand (Pillow writes 16-bit greyscale only)."""
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(height))
    return build_png(ihdr(width, height, bit_depth=16, colour=2), idat=raw)


def _valid() -> Iterator[CorpusCase]:
    img = picture()
    yield CorpusCase("jpeg_cmyk", encode(img.convert("CMYK"), "JPEG"), "image/jpeg", OK)
    yield CorpusCase("jpeg_greyscale", encode(img.convert("L"), "JPEG"), "image/jpeg", OK)
    yield CorpusCase("jpeg_progressive", encode(img, "JPEG", progressive=True), "image/jpeg", OK)
    exif = Image.Exif()
    exif[0x0112] = 6
    yield CorpusCase("jpeg_exif_rotated", encode(img, "JPEG", exif=exif), "image/jpeg", OK)
    bad_orientation = Image.Exif()
    bad_orientation[0x0112] = 99
    yield CorpusCase("jpeg_exif_orientation_99", encode(img, "JPEG", exif=bad_orientation), "image/jpeg", OK)
    # A broken EXIF block is metadata damage, not pixel damage: the picture still decodes.
    broken = b"Exif\0\0II*\0\xff\xff\xff\x7f" + bytes(16)
    yield CorpusCase("jpeg_broken_exif", encode(img, "JPEG", exif=broken), "image/jpeg", OK)
    arr16 = (np.arange(64 * 96, dtype=np.uint32).reshape(64, 96) * 10).astype(np.uint16)
    yield CorpusCase("png_16bit_grey", encode(Image.fromarray(arr16), "PNG"), "image/png", OK)
    yield CorpusCase("png_16bit_rgb", _png16_rgb(), "image/png", OK)
    yield CorpusCase("png_palette", encode(img.convert("P"), "PNG"), "image/png", OK)
    yield CorpusCase("png_palette_transparency", encode(img.convert("P"), "PNG", transparency=0), "image/png", OK)
    rgba = img.convert("RGBA")
    rgba.putalpha(128)
    yield CorpusCase("png_rgba", encode(rgba, "PNG"), "image/png", OK)
    yield CorpusCase("png_greyscale_alpha", encode(img.convert("LA"), "PNG"), "image/png", OK)
    yield CorpusCase("png_1bit", encode(img.convert("1"), "PNG"), "image/png", OK)
    yield CorpusCase("png_with_icc_and_text", encode(img, "PNG", icc_profile=b"\0" * 128), "image/png", OK)
    yield CorpusCase("webp_lossy", encode(img, "WEBP", quality=80), "image/webp", OK)
    yield CorpusCase("webp_lossless_rgba", encode(rgba, "WEBP", lossless=True), "image/webp", OK)
    # The content decides, not the label: a PNG sent as image/jpeg is still a PNG.
    yield CorpusCase("png_labelled_jpeg", encode(img, "PNG"), "image/jpeg", OK)


def _tiny_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("shell.php", "<?php system($_GET['c']); ?>")
    return buf.getvalue()


def _polyglots() -> Iterator[CorpusCase]:
    img = picture()
    png = encode(img, "PNG")
    jpeg = encode(img, "JPEG", quality=85)
    html = b"<html><script>alert(document.cookie)</script></html>"
    # Decodable images carrying a payload: the image is read, the payload is never looked at.
    yield CorpusCase("png_with_zip_appended", png + _tiny_zip(), "image/png", OK)
    yield CorpusCase("png_with_html_appended", png + html, "image/png", OK)
    yield CorpusCase(
        "png_with_script_in_text_chunk", insert_chunks(png, png_chunk(b"tEXt", b"Comment\0" + html)), "image/png", OK
    )
    yield CorpusCase(
        "jpeg_with_php_in_comment", encode(img, "JPEG", comment=b"<?php system($_GET['c']); ?>"), "image/jpeg", OK
    )
    yield CorpusCase("jpeg_with_zip_appended", jpeg + _tiny_zip(), "image/jpeg", OK)
    yield CorpusCase("jpeg_with_pdf_header_in_comment", encode(img, "JPEG", comment=b"%PDF-1.7\n"), "image/jpeg", OK)
    # A right magic over a wrong body: claims an allowed format, cannot be decoded.
    yield CorpusCase("png_magic_then_html", PNG_MAGIC + html * 20, "image/png", CORRUPT)
    yield CorpusCase("jpeg_magic_then_zip", b"\xff\xd8\xff" + _tiny_zip(), "image/jpeg", CORRUPT)
    yield CorpusCase("riff_webp_magic_then_png", b"RIFF\x00\x01\x00\x00WEBP" + png, "image/webp", CORRUPT)
    # A wrong magic over a right body: the image inside does not make the file an image.
    yield CorpusCase("html_then_png", html + png, "image/png", UNSUPPORTED)
    yield CorpusCase("zip_then_png", _tiny_zip() + png, "image/png", UNSUPPORTED)


def _psd() -> bytes:
    # Photoshop: signature, version 1, 3 channels, 8x8, 8 bits, RGB, then empty sections.
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 8, 8, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(3 * 64)


def _outside_allowlist() -> Iterator[CorpusCase]:
    img = picture(32, 32)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto 32 32 lineto stroke\nshowpage\n"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><script>alert(1)</script></svg>'
    yield CorpusCase("eps", eps, "application/postscript", UNSUPPORTED)
    yield CorpusCase("eps_labelled_png", eps, "image/png", UNSUPPORTED)
    yield CorpusCase("psd", _psd(), "image/vnd.adobe.photoshop", UNSUPPORTED)
    yield CorpusCase("tiff", encode(img, "TIFF"), "image/tiff", UNSUPPORTED)
    yield CorpusCase("tiff_labelled_jpeg", encode(img, "TIFF", compression="tiff_deflate"), "image/jpeg", UNSUPPORTED)
    yield CorpusCase("pdf", encode(img, "PDF"), "application/pdf", UNSUPPORTED)
    yield CorpusCase("pdf_labelled_png", encode(img, "PDF"), "image/png", UNSUPPORTED)
    yield CorpusCase("bmp", encode(img, "BMP"), "image/bmp", UNSUPPORTED)
    yield CorpusCase("gif", encode(img, "GIF"), "image/gif", UNSUPPORTED)
    yield CorpusCase("svg", svg, "image/svg+xml", UNSUPPORTED)
    yield CorpusCase("ico", encode(img, "ICO"), "image/png", UNSUPPORTED)
    yield CorpusCase("ppm", encode(img, "PPM"), "image/png", UNSUPPORTED)
    yield CorpusCase("tga", encode(img, "TGA"), "image/png", UNSUPPORTED)
    yield CorpusCase("jpeg2000", encode(img, "JPEG2000"), "image/jpeg", UNSUPPORTED)
    yield CorpusCase("avif_header", b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + bytes(64), "image/png", UNSUPPORTED)
    yield CorpusCase("mp4_header", b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2" + bytes(64), "video/mp4", UNSUPPORTED)
    yield CorpusCase("riff_wave", b"RIFF\x24\0\0\0WAVEfmt " + bytes(32), "image/webp", UNSUPPORTED)


def _damaged_headers() -> Iterator[CorpusCase]:
    png = encode(picture(), "PNG")
    header = bytearray(png)
    header[29] ^= 0xFF  # a byte of IHDR's CRC
    yield CorpusCase("png_bad_ihdr_crc", bytes(header), "image/png", CORRUPT)
    yield CorpusCase("png_zero_width", build_png(ihdr(0, 16), idat=bytes(64)), "image/png", CORRUPT)
    yield CorpusCase("png_bad_colour_type", build_png(ihdr(16, 16, colour=5), idat=bytes(64)), "image/png", CORRUPT)
    yield CorpusCase("png_bad_bit_depth", build_png(ihdr(16, 16, bit_depth=7), idat=bytes(64)), "image/png", CORRUPT)
    yield CorpusCase(
        "png_idat_not_zlib",
        PNG_MAGIC + ihdr(16, 16) + png_chunk(b"IDAT", b"\x00" * 64) + png_chunk(b"IEND", b""),
        "image/png",
        CORRUPT,
    )
    yield CorpusCase("png_idat_too_short", build_png(ihdr(64, 64), idat=bytes(10)), "image/png", CORRUPT)
    jpeg = encode(picture(), "JPEG", quality=85)
    yield CorpusCase("jpeg_declares_zero_height", jpeg_with_size(jpeg, 96, 0), "image/jpeg", CORRUPT)
    dqt = next(off for marker, off in jpeg_segments(jpeg) if marker == 0xDB)
    yield CorpusCase("jpeg_dqt_length_0", jpeg[: dqt + 2] + b"\x00\x00" + jpeg[dqt + 4 :], "image/jpeg", CORRUPT)
    sos = jpeg_segments(jpeg)[-1][1]
    yield CorpusCase("jpeg_no_scan_data", jpeg[:sos] + b"\xff\xd9", "image/jpeg", CORRUPT)


# ---- mutation fuzzing ------------------------------------------------------------------

_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff")


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation of `data` and its kind: bit flips, insertions, deletions, truncation,
    interesting values (lengths and sizes at their extremes) or a duplicated range."""
    kind = rng.choice(("bitflip", "insert", "delete", "truncate", "interesting", "duplicate"))
    # Half the mutations land in the first 64 bytes, where the headers and their lengths are.
    end = min(len(data), 64) if rng.random() < 0.5 else len(data)
    at = rng.randrange(end)
    out = bytearray(data)
    if kind == "bitflip":
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(end)
            out[pos] ^= 1 << rng.randrange(8)
    elif kind == "insert":
        out[at:at] = rng.randbytes(rng.randint(1, 32))
    elif kind == "delete":
        del out[at : at + rng.randint(1, 32)]
    elif kind == "truncate":
        del out[at:]
    elif kind == "interesting":
        value = rng.choice(_INTERESTING)
        out[at : at + len(value)] = value
    else:
        length = rng.randint(1, 256)
        out[at:at] = out[at : at + length]
    return kind, bytes(out)


def mutations(seeds: Sequence[bytes], count: int, seed: int = 1234) -> list[tuple[str, bytes]]:
    """`count` seeded mutations spread evenly over `seeds`, each named `<seed index>_<n>_<kind>`."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        index = n % len(seeds)
        kind, data = mutate(seeds[index], rng)
        out.append((f"{index}_{n}_{kind}", data))
    return out


# ---- CLI -------------------------------------------------------------------------------


class _Case(Protocol):
    @property
    def data(self) -> bytes: ...


def write_corpus(argv: Sequence[str] | None, module: str, doc: str, generate: Callable[[Path], Sequence[_Case]]) -> int:
    """A corpus module's command line: `python -m MODULE OUT_DIR` writes its cases there."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the cases and manifest.json to")
    args = parser.parse_args(argv)
    cases = generate(args.out_dir)
    total = sum(len(c.data) for c in cases)
    print(f"{len(cases)} cases, {total / 1e6:.1f} MB, written to {args.out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Write the corpus to a directory."""
    return write_corpus(argv, "tests.security.corpus", __doc__ or "", generate)


if __name__ == "__main__":
    sys.exit(main())
