"""digits_cnn: a small CNN for handwritten digits, trained here on scikit-learn's digits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from models import heldout
from models import weights as wsrc
from models.classifiers import classification_outputs, classification_postprocess, classification_tensors
from models.registry import Affine, ModelSpec, Task, WeightsInfo, register

INPUT_SIZE = 28
DIGIT_BOX = 20  # the digit is fitted into a 20x20 box centred in 28x28, as in MNIST
CATEGORIES = tuple(str(d) for d in range(10))
WEIGHTS_FILE = "digits_cnn.safetensors"
# Pinned by models/training/train_digits_cnn.py; tests check pin, file and report agree.
WEIGHTS_SHA256 = "73079991f5f4c3af1f9c8157fbf9cbe921f38f33c966edc8e44024068b940317"


class DigitsCNN(nn.Module):
    """Two conv blocks and a small classifier head: 28x28 greyscale in, 10 logits out."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits


SMOOTH_SIGMA = 1.0  # px: enough to sink pixel noise under the threshold, too little to merge strokes
REGION_THRESHOLD = 0.15  # of the smoothed peak: what counts as a stroke when finding the digit
# A stroke joins the digit's heaviest one when it touches it (a gap of TOUCH of its size, or 2 px)
# with TOUCH_FRACTION of its ink, or lies within NEAR of its size with NEAR_FRACTION of its ink.
TOUCH, TOUCH_FRACTION = 0.05, 0.15
NEAR, NEAR_FRACTION = 0.25, 0.5
REGION_GROWTH = 2  # px the region grows by, so the faint rim of every stroke stays in


def _gap(a: tuple[slice, slice], b: tuple[slice, slice]) -> int:
    """Pixels between two bounding boxes (0 when they touch or overlap)."""
    rows = max(a[0].start - b[0].stop, b[0].start - a[0].stop, 0)
    cols = max(a[1].start - b[1].stop, b[1].start - a[1].stop, 0)
    return int(max(rows, cols))


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """`mask` grown `steps` times into each pixel's four neighbours (what scipy's binary_dilation
    does with its default structure and `iterations=steps`, in a fraction of its time)."""
    for _ in range(steps):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def _digit_region(ink: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The pixels of the picture's digit: its heaviest stroke and the strokes next to it, grown by 2 px.

    Found on a smoothed copy, so pixel noise, specks and strokes elsewhere in the picture (a
    ruled line, a box) do not widen the crop; a clean picture of one digit keeps all its ink.
    scipy.ndimage labels the strokes (connected components). Returned as the window of `ink` the
    region lies in and the region's mask within that window: the rest of the picture is never
    touched again.
    """
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(ink, SMOOTH_SIGMA)
    labels, count = ndimage.label(smooth > REGION_THRESHOLD * float(smooth.max()))
    if count == 0:
        return np.ones(ink.shape, dtype=bool), (slice(0, ink.shape[0]), slice(0, ink.shape[1]))
    # Each stroke's smoothed ink, summed over its own pixels only (ndimage.sum adds the same
    # values in the same order, and passes over the whole background as well).
    stroked = labels > 0
    mass = np.bincount(labels[stroked], smooth[stroked], minlength=count + 1)[1:]
    boxes = ndimage.find_objects(labels)
    main = int(mass.argmax())
    size = max(boxes[main][0].stop - boxes[main][0].start, boxes[main][1].stop - boxes[main][1].start)
    touching, near = max(2.0, TOUCH * size), NEAR * size
    parts = [
        n + 1
        for n, box in enumerate(boxes)
        if (mass[n] >= TOUCH_FRACTION * mass[main] and _gap(box, boxes[main]) <= touching)
        or (mass[n] >= NEAR_FRACTION * mass[main] and _gap(box, boxes[main]) <= near)
    ]

    def span(axis: int) -> slice:
        start = min(boxes[n - 1][axis].start for n in parts) - REGION_GROWTH
        stop = max(boxes[n - 1][axis].stop for n in parts) + REGION_GROWTH
        return slice(max(start, 0), min(stop, ink.shape[axis]))

    rows, cols = span(0), span(1)
    return _grow(np.isin(labels[rows, cols], parts), REGION_GROWTH), (rows, cols)


@dataclass(frozen=True)
class _InkLayout:
    """Where a digit's ink lies in the original and where `normalize_digit` puts it in the input."""

    ink: np.ndarray  # the ink's bounding box, background removed, peak scaled to 1
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of that box in the original; x1, y1 exclusive
    size: tuple[int, int]  # (width, height) of the box once fitted into DIGIT_BOX
    offset: tuple[int, int]  # top-left corner of the fitted box in the INPUT_SIZE canvas


def _ink_layout(img: Image.Image) -> _InkLayout | None:
    """The crop and placement shared by `normalize_digit` and `digit_geometry`; None when there is no ink."""
    arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    background = float(np.median(border))
    if background > 0.5:
        arr, background = 1.0 - arr, 1.0 - background
    arr = np.clip(arr - background, 0.0, None)
    if float(arr.max()) <= 1e-6:
        return None
    region, (window_rows, window_cols) = _digit_region(arr)
    arr = arr[window_rows, window_cols]
    arr = arr / float(arr[region].max())
    inked = (arr > 0.2) & region
    rows = np.flatnonzero(inked.any(axis=1))
    cols = np.flatnonzero(inked.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    arr = arr[top:bottom, left:right]
    x0, y0 = window_cols.start + left, window_rows.start + top
    x1, y1 = window_cols.start + right, window_rows.start + bottom
    h, w = arr.shape
    scale = DIGIT_BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    offset = ((INPUT_SIZE - size[0]) // 2, (INPUT_SIZE - size[1]) // 2)
    return _InkLayout(arr, (x0, y0, x1, y1), size, offset)


def normalize_digit(img: Image.Image) -> torch.Tensor:
    """Greyscale digit photo or scan -> 1x28x28 float tensor, ink bright on black, centred.

    Used for training and serving alike: dark ink on light paper is inverted (the
    background is read off the border), the ink's bounding box is cropped and fitted
    into a 20x20 box in the middle of a 28x28 canvas, as MNIST-style models expect.
    """
    layout = _ink_layout(img)
    if layout is None:
        return torch.zeros(1, INPUT_SIZE, INPUT_SIZE)
    glyph = Image.fromarray((layout.ink * 255).astype(np.uint8), "L").resize(
        layout.size, Image.Resampling.BILINEAR, reducing_gap=None
    )
    canvas = Image.new("L", (INPUT_SIZE, INPUT_SIZE), 0)
    canvas.paste(glyph, layout.offset)
    tensor: torch.Tensor = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).unsqueeze(0)
    return tensor


def digit_geometry(img: Image.Image) -> Affine:
    """Where `normalize_digit`'s input lies in `img`: its fitted box maps onto the ink's bounding box."""
    layout = _ink_layout(img)
    if layout is None:
        # A blank picture gives an all-zero input; no part of the picture is singled out.
        return (img.width / INPUT_SIZE, 0.0, 0.0, 0.0, img.height / INPUT_SIZE, 0.0)
    x0, y0, x1, y1 = layout.box
    # Pixel edges map to pixel edges (PIL's resize), so the scale is box over fitted size.
    sx, sy = (x1 - x0) / layout.size[0], (y1 - y0) / layout.size[1]
    return (sx, 0.0, x0 - layout.offset[0] * sx, 0.0, sy, y0 - layout.offset[1] * sy)


def _build_random() -> nn.Module:
    return DigitsCNN().eval()


def load(path: Path, sha256: str) -> nn.Module:
    """DigitsCNN with the weights in `path`, pinned by `sha256`, in eval mode."""
    model = DigitsCNN()
    model.load_state_dict(wsrc.load_state_dict_file(path, sha256), strict=True)
    return model.eval()


def _build() -> nn.Module:
    return load(wsrc.BUNDLED_DIR / WEIGHTS_FILE, WEIGHTS_SHA256)


def _factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
    if weights not in (None, "bundled", "random"):
        raise wsrc.WeightsError(f"{name}: weights must be 'bundled' (default) or 'random'")
    if weights == "random":
        info = WeightsInfo("random", "random")
        build = _build_random
    else:
        info = WeightsInfo("bundled", WEIGHTS_FILE, WEIGHTS_SHA256)
        build = _build
    return ModelSpec(
        name=name,
        task=Task.CLASSIFICATION,
        build=build,
        preprocess=normalize_digit,
        postprocess=classification_postprocess(CATEGORIES),
        tensor_outputs=classification_tensors,
        outputs=classification_outputs(len(CATEGORIES)),
        categories=CATEGORIES,
        input_size=(INPUT_SIZE, INPUT_SIZE),
        weights=info,
        image_mode="L",
        family="bundled.digits",
        input_geometry=digit_geometry,
        # Grad-CAM at full 28x28 resolution: the last 7x7 map feeds a dense head and spreads heat
        # over the blank frame around the fitted digit (measured with the first bundled weights:
        # 0.43 of the heat in the digit's box there, 0.71 here, on 200 held-out scenes;
        # tests/unit/test_explain.py).
        explain_layer="features.5",
        held_out=heldout.digits,
        description="CNN trained on scikit-learn's handwritten digits (models/training/train_digits_cnn.py)",
    )


register("digits_cnn", Task.CLASSIFICATION, _factory, family="bundled.digits")
