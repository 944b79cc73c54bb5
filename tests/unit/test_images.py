"""Image decoding: allowlist by content, limits before decode, EXIF, mode conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.images import (
    MIN_CONTRAST,
    CorruptImage,
    ImageLimits,
    ImageTooLarge,
    UnsupportedImageFormat,
    decode_image,
    ink_map,
    sniff_format,
)
from tests.conftest import encode


def _rgb(w: int = 64, h: int = 48) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(("fmt", "name"), [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP")])
def test_allowed_formats_decode_to_the_requested_mode(fmt: str, name: str) -> None:
    data = encode(_rgb(), fmt)
    assert sniff_format(data) == name
    img = decode_image(data, "RGB")
    assert (img.mode, img.size) == ("RGB", (64, 48))
    assert decode_image(data, "L").mode == "L"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "PPM", "ICO"])
def test_formats_outside_the_allowlist_are_refused_by_content(fmt: str) -> None:
    with pytest.raises(UnsupportedImageFormat):
        decode_image(encode(_rgb(32, 32), fmt))


def test_random_bytes_are_an_unsupported_format() -> None:
    with pytest.raises(UnsupportedImageFormat):
        decode_image(b"this is not an image at all")


def test_empty_body_is_corrupt() -> None:
    with pytest.raises(CorruptImage):
        decode_image(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_images_are_corrupt(fmt: str, fraction: float) -> None:
    data = encode(_rgb(256, 256), fmt)
    with pytest.raises(CorruptImage):
        decode_image(data[: int(len(data) * fraction)])


def test_byte_limit_is_checked_first() -> None:
    data = encode(_rgb(), "PNG")
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(data, limits=ImageLimits(max_bytes=len(data) - 1))


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    bomb = encode(Image.new("1", (12000, 12000)), "PNG")  # 144 Mpx, a few KB
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(bomb, limits=ImageLimits(max_pixels=40_000_000))


def test_exif_orientation_is_applied() -> None:
    img = _rgb(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (20, 60)


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    img = decode_image(encode(Image.fromarray(arr), "PNG"), "L")
    assert 126 <= img.getpixel((0, 0)) <= 129


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA"])
def test_other_modes_convert_to_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = decode_image(encode(_rgb().convert(mode), fmt), "RGB")
    assert img.mode == "RGB"


def test_ink_map_is_the_same_for_either_polarity_any_paper_and_faint_ink() -> None:
    rng = np.random.default_rng(0)
    strokes = np.zeros((32, 32), dtype=np.float32)
    strokes[8:24, 14:18] = rng.uniform(0.5, 1.0, (16, 4))
    strokes /= strokes.max()
    dark_on_white = 1.0 - 0.8 * strokes
    expected = ink_map(dark_on_white)
    np.testing.assert_allclose(expected, strokes, atol=1e-6)  # the strongest ink is 1
    np.testing.assert_allclose(ink_map(1.0 - dark_on_white), expected, atol=1e-6)  # chalk on a board
    np.testing.assert_allclose(ink_map(0.7 - 0.3 * strokes), expected, atol=1e-5)  # grey paper, fainter ink
    # Ink fainter than MIN_CONTRAST is not stretched into full strength (it may be noise).
    faint = ink_map(0.9 - 0.5 * MIN_CONTRAST * strokes)
    assert float(faint.max()) == pytest.approx(0.5, abs=1e-5)
