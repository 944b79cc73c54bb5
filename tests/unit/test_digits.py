"""The bundled digits_cnn: held-out accuracy, real (typeset) digits, and the weights pin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from models import digits
from models.images import decode_image
from models.registry import ModelSpec, get_spec
from models.training.data import render_digit
from models.weights import BUNDLED_DIR, sha256_file
from tests.conftest import encode


@pytest.fixture(scope="module")
def served() -> tuple[ModelSpec, torch.nn.Module]:
    spec = get_spec("digits_cnn")
    return spec, spec.build()


def _predict(served: tuple[ModelSpec, torch.nn.Module], pngs: list[bytes]) -> list[int]:
    spec, module = served
    batch = torch.stack([spec.preprocess(decode_image(png, spec.image_mode)) for png in pngs])
    with torch.inference_mode():
        return module(batch).argmax(dim=1).tolist()


def test_held_out_accuracy_is_at_least_97_percent(
    served: tuple[ModelSpec, torch.nn.Module], held_out_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = held_out_digits
    pngs = [encode(render_digit(img)) for img in images]
    accuracy = float(np.mean(np.array(_predict(served, pngs)) == labels))
    assert accuracy >= 0.97
    report = json.loads((BUNDLED_DIR / "digits_cnn.json").read_text())
    assert accuracy == pytest.approx(report["held_out_accuracy"], abs=0.01)


def test_typeset_digits_are_recognised_in_either_polarity(served: tuple[ModelSpec, torch.nn.Module]) -> None:
    pngs, labels = [], []
    for size, ink, paper in ((48, 0, 255), (96, 255, 0), (160, 30, 220)):
        font = ImageFont.load_default(size=int(size * 0.7))
        for digit in range(10):
            img = Image.new("L", (size, size), paper)
            ImageDraw.Draw(img).text((size / 2, size / 2), str(digit), fill=ink, font=font, anchor="mm")
            pngs.append(encode(img.convert("RGB")))
            labels.append(digit)
    correct = sum(p == y for p, y in zip(_predict(served, pngs), labels, strict=True))
    assert correct >= 28


def test_weights_pin_file_and_training_report_agree() -> None:
    report = json.loads((BUNDLED_DIR / "digits_cnn.json").read_text())
    actual = sha256_file(BUNDLED_DIR / digits.WEIGHTS_FILE)
    assert actual == digits.WEIGHTS_SHA256 == report["sha256"]
    assert (BUNDLED_DIR / digits.WEIGHTS_FILE).stat().st_size < 5_000_000


def test_blank_image_gives_a_prediction_not_an_error(served: tuple[ModelSpec, torch.nn.Module]) -> None:
    assert len(_predict(served, [encode(Image.new("L", (40, 40), 255))])) == 1


def _digit_on_sheet(side: int, at: tuple[int, int]) -> np.ndarray:
    from models.training.data import digits_split

    _, _, x_test, _ = digits_split()
    sheet = np.full((side, side), 230.0)
    glyph = np.asarray(render_digit(x_test[0], size=40), dtype=np.float64)
    sheet[at[1] : at[1] + 40, at[0] : at[0] + 40] = glyph * (glyph < 230) + 230 * (glyph >= 230)
    return sheet


def test_the_crop_finds_the_digit_through_noise_specks_and_strokes_beside_it() -> None:
    clean = _digit_on_sheet(160, (60, 50))
    expected = digits._ink_layout(Image.fromarray(clean.astype(np.uint8), "L"))
    assert expected is not None
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(0.0, 0.15 * 255, clean.shape)
    cluttered = clean.copy()
    cluttered[10:12, 5:60] = 0  # a ruled line
    cluttered[130:134, 130:134] = 0  # a speck
    for picture in (noisy, cluttered):
        found = digits._ink_layout(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8), "L"))
        assert found is not None
        # Within a few pixels of the clean crop: the noise on the digit's own rim may widen it a little.
        assert np.abs(np.subtract(found.box, expected.box)).max() <= 3, (found.box, expected.box)


def _reference_region(ink: np.ndarray) -> np.ndarray:
    """The digit's region as scipy.ndimage says it in so many words, over the whole picture:
    what `digits._digit_region` computes in a window, faster."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(ink, digits.SMOOTH_SIGMA)
    labels, count = ndimage.label(smooth > digits.REGION_THRESHOLD * float(smooth.max()))
    if count == 0:
        return np.ones(ink.shape, dtype=bool)
    mass = np.asarray(ndimage.sum(smooth, labels, index=np.arange(1, count + 1)))
    boxes = ndimage.find_objects(labels)
    main = int(mass.argmax())
    size = max(boxes[main][0].stop - boxes[main][0].start, boxes[main][1].stop - boxes[main][1].start)
    touching, near = max(2.0, digits.TOUCH * size), digits.NEAR * size
    parts = [
        n + 1
        for n, box in enumerate(boxes)
        if (mass[n] >= digits.TOUCH_FRACTION * mass[main] and digits._gap(box, boxes[main]) <= touching)
        or (mass[n] >= digits.NEAR_FRACTION * mass[main] and digits._gap(box, boxes[main]) <= near)
    ]
    region: np.ndarray = ndimage.binary_dilation(np.isin(labels, parts), iterations=digits.REGION_GROWTH)
    return region


def test_the_crop_window_is_exactly_the_whole_picture_region() -> None:
    from models.training.scenes import varied_scenes

    pictures = [np.asarray(scene.image, dtype=np.float32) / 255.0 for scene in varied_scenes("validation", 40, 7)]
    rng = np.random.default_rng(3)
    pictures += [np.clip(_digit_on_sheet(96, (20, 30)) + rng.normal(0, 40, (96, 96)), 0, 255) / 255.0]
    pictures += [np.zeros((32, 48)), np.eye(40)]  # no ink; a stroke corner to corner (the window is the picture)
    for picture in pictures:
        ink = np.clip(1.0 - picture.astype(np.float32) - 0.05, 0.0, None)
        expected = _reference_region(ink)
        mask, (rows, cols) = digits._digit_region(ink)
        region = np.zeros(ink.shape, dtype=bool)
        region[rows, cols] = mask
        assert np.array_equal(region, expected)
