"""JPEGs decoded at a reduced scale for classifiers: the right size, the original size kept, same input."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from models.images import decode_image, original_size
from models.registry import get_spec


def photo_jpeg(size: tuple[int, int], orientation: int | None = None) -> bytes:
    img = Image.fromarray(load_sample_image("china.jpg")).resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def test_a_big_jpeg_decodes_at_the_smallest_scale_that_keeps_the_side() -> None:
    img = decode_image(photo_jpeg((2560, 1920)), "RGB", min_side=256)
    assert img.size == (640, 480)  # 1/4: 1/8 would make the short side 240 < 256
    assert original_size(img) == (2560, 1920)
    assert img.mode == "RGB"


def test_without_min_side_or_when_small_nothing_changes() -> None:
    assert decode_image(photo_jpeg((2560, 1920)), "RGB").size == (2560, 1920)
    small = decode_image(photo_jpeg((640, 480)), "RGB", min_side=256)
    assert small.size == (640, 480)
    assert original_size(small) == (640, 480)


def test_png_is_never_reduced() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1600), "red").save(buffer, "PNG")
    img = decode_image(buffer.getvalue(), "RGB", min_side=256)
    assert img.size == (2000, 1600)


def test_exif_rotation_keeps_the_original_size_upright() -> None:
    img = decode_image(photo_jpeg((2560, 1920), orientation=6), "RGB", min_side=256)
    assert img.size == (480, 640)
    assert original_size(img) == (1920, 2560)


@pytest.mark.parametrize(("model", "side"), [("resnet18", 256), ("mobilenet_v3_large", 232)])
def test_a_classifiers_input_from_the_reduced_decode_matches_the_full_one(model: str, side: int) -> None:
    spec = get_spec(model, weights="random")
    assert spec.decode_min_side == side  # the resize of the weights' preset
    data = photo_jpeg((2560, 1920))
    full = spec.preprocess(decode_image(data, "RGB"))
    reduced = spec.preprocess(decode_image(data, "RGB", min_side=spec.decode_min_side))
    assert reduced.shape == full.shape
    # DCT scaling filters differently from the antialiased resize: a small mean difference
    # (about two intensity levels), no structural change.
    assert float((reduced - full).abs().mean()) < 2.5 / 255 / 0.225
    assert float(torch.corrcoef(torch.stack([reduced.flatten(), full.flatten()]))[0, 1]) > 0.99
