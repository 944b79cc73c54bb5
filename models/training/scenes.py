"""Digit scenes: several scikit-learn digits placed on a canvas, with exact boxes and masks.

The data of the bundled detector, segmenter and explanation checks. Each split of scenes draws
only on its own digits: "train" on the whole training split (`data.digits_split`), "fit" and
"validation" on the two parts of it (`data.digits_validation_split`), "test" on the held-out
split, so a test scene never shows a digit any bundled model trained on, and a validation scene
none that a model trained on "fit" saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from models.training.data import digits_split, digits_validation_split

SCENE_SIZE = 128
MIN_GLYPH, MAX_GLYPH = 20, 44
INK_THRESHOLD = 0.35  # fraction of a glyph's peak ink that counts as the digit (mask and box)
TRAIN_SEED, TEST_SEED, VALIDATION_SEED = 1, 2, 5  # "fit" scenes use TRAIN_SEED


@dataclass(frozen=True)
class Scene:
    """One picture and its ground truth, in the picture's own pixels."""

    image: Image.Image  # mode "L", dark ink on light paper
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2; x2 and y2 exclusive
    labels: np.ndarray  # (N,) int64 digit of each box
    mask: np.ndarray  # (H, W) uint8: 0 background, 1 + digit on the digit's ink

    @property
    def categories(self) -> np.ndarray:
        """Segmentation classes present besides background (1 + digit), sorted."""
        return np.unique(self.mask[self.mask > 0])


def _glyph(image8: np.ndarray, size: int) -> np.ndarray:
    pil = Image.fromarray((np.clip(image8, 0, 1) * 255).astype(np.uint8), "L")
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def _overlaps(box: tuple[int, int, int, int], boxes: Sequence[tuple[int, int, int, int]], margin: int) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin for b in boxes)


def make_scene(
    images8: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int = SCENE_SIZE,
    num_digits: int | None = None,
    max_digits: int = 4,
) -> Scene:
    """A scene of `num_digits` (default 1 to `max_digits`) non-overlapping digits drawn from `images8`."""
    count = num_digits if num_digits is not None else int(rng.integers(1, max_digits + 1))
    ink = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    out_labels: list[int] = []
    for _ in range(count):
        for _attempt in range(50):
            g = int(rng.integers(MIN_GLYPH, MAX_GLYPH + 1))
            x, y = int(rng.integers(0, size - g + 1)), int(rng.integers(0, size - g + 1))
            if not _overlaps((x, y, x + g, y + g), placed, margin=2):
                break
        else:
            continue  # the canvas is full; a scene may hold fewer digits than asked
        index = int(rng.integers(len(images8)))
        glyph = _glyph(images8[index], g)
        glyph_ink = glyph > INK_THRESHOLD * max(float(glyph.max()), 1e-6)
        if not glyph_ink.any():
            continue
        ink[y : y + g, x : x + g] = np.maximum(ink[y : y + g, x : x + g], glyph)
        mask[y : y + g, x : x + g][glyph_ink] = 1 + int(labels[index])
        placed.append((x, y, x + g, y + g))
        out_labels.append(int(labels[index]))
    boxes = []
    for (x, y, x2, y2), label in zip(placed, out_labels, strict=True):
        rows, cols = np.nonzero(mask[y:y2, x:x2] == 1 + label)
        boxes.append((x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1))
    paper = float(rng.uniform(0.75, 1.0))
    contrast = float(rng.uniform(0.55, 0.75))
    noise = rng.normal(0.0, float(rng.uniform(0.0, 0.04)), (size, size)).astype(np.float32)
    pixels = np.clip(paper - contrast * ink + noise, 0.0, 1.0)
    return Scene(
        image=Image.fromarray((pixels * 255).round().astype(np.uint8), "L"),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(out_labels, dtype=np.int64),
        mask=mask,
    )


SceneSplit = Literal["train", "fit", "validation", "test"]


def split_digits(split: SceneSplit) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits and labels of `split`: "train" is "fit" and "validation" together."""
    if split in ("fit", "validation"):
        x_fit, y_fit, x_val, y_val, _, _ = digits_validation_split()
        return (x_fit, y_fit) if split == "fit" else (x_val, y_val)
    x_train, y_train, x_test, y_test = digits_split()
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def digit_scenes(split: SceneSplit, count: int, *, seed: int | None = None, **kwargs: int) -> list[Scene]:
    """`count` scenes built only from the `split` digits; seeded, so the same call gives the same scenes."""
    images, labels = split_digits(split)
    default_seed = {"train": TRAIN_SEED, "fit": TRAIN_SEED, "validation": VALIDATION_SEED, "test": TEST_SEED}[split]
    rng = np.random.default_rng(seed if seed is not None else default_seed)
    return [make_scene(images, labels, rng, **kwargs) for _ in range(count)]
