"""Digit scenes: several scikit-learn digits placed on a canvas, with exact boxes and masks.

The data of the bundled detector, segmenter and explanation checks. Each split of scenes draws
only on its own digits: "train" on the whole training split (`data.digits_split`), "fit" and
"validation" on the two parts of it (`data.digits_validation_split`), "test" on the held-out
split, so a test scene never shows a digit any bundled model trained on, and a validation scene
none that a model trained on "fit" saw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.training.data import digits_split, digits_validation_split

SCENE_SIZE = 128
MIN_GLYPH, MAX_GLYPH = 20, 44
MAX_FITTED_GLYPH = 64  # the largest digit of a varied scene once fitted into SCENE_SIZE
INK_THRESHOLD = 0.35  # fraction of a glyph's peak ink that counts as the digit (mask and box)
TRAIN_SEED, TEST_SEED, VALIDATION_SEED = 1, 2, 5  # "fit" scenes use TRAIN_SEED
VARIED_SEED = 3  # varied training scenes (`varied_scenes`), plus the training run's own seed
VARIED_NOTE = (
    "varied scenes (models.training.scenes.varied_scene): canvases 64-512 px, digits 10-64 px once fitted, "
    "rotation up to 20 degrees, clutter strokes, either polarity, blur, noise, JPEG, contrast 12-100%"
)


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


@dataclass(frozen=True)
class Layout:
    """Where a scene's digits lie, before it is rendered: ink in [0, 1], mask, boxes, labels."""

    ink: np.ndarray  # (H, W) float32, 1 where the strongest ink is
    mask: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def _clutter(
    ink: np.ndarray, placed: Sequence[tuple[int, int, int, int]], count: int, rng: np.random.Generator
) -> None:
    """Draw `count` strokes (lines, rectangles, triangles) beside the digits, never over them."""
    size = ink.shape[0]
    width = max(1, round(size / 64))
    for _ in range(count):
        for _attempt in range(30):
            side = int(rng.integers(max(4, size // 10), max(5, size // 3)))
            x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            if not _overlaps((x, y, x + side, y + side), placed, margin=2):
                break
        else:
            continue
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        kind = int(rng.integers(3))
        corners = [(x + float(rng.uniform(0, side)), y + float(rng.uniform(0, side))) for _ in range(3)]
        if kind == 0:
            draw.line(corners[:2], fill=255, width=width)
        elif kind == 1:
            draw.rectangle((x, y, x + side - 1, y + side - 1), outline=255, width=width)
        else:
            draw.polygon(corners, outline=255, width=width)
        ink[:] = np.maximum(ink, np.asarray(layer, dtype=np.float32) / 255.0 * float(rng.uniform(0.6, 1.0)))


def layout_scene(
    images8: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int = SCENE_SIZE,
    num_digits: int | None = None,
    max_digits: int = 4,
    glyph: tuple[int, int] = (MIN_GLYPH, MAX_GLYPH),
    rotation: float = 0.0,
    clutter: int = 0,
) -> Layout:
    """`num_digits` (default 1 to `max_digits`) non-overlapping digits of `glyph` px drawn from `images8`.

    Each digit turns by up to `rotation` degrees; `clutter` strokes are drawn beside the digits
    (ink, not digits: the mask and boxes leave them out).
    """
    count = num_digits if num_digits is not None else int(rng.integers(1, max_digits + 1))
    ink = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    out_labels: list[int] = []
    for _ in range(count):
        for _attempt in range(50):
            g = int(rng.integers(glyph[0], glyph[1] + 1))
            x, y = int(rng.integers(0, size - g + 1)), int(rng.integers(0, size - g + 1))
            if not _overlaps((x, y, x + g, y + g), placed, margin=2):
                break
        else:
            continue  # the canvas is full; a scene may hold fewer digits than asked
        index = int(rng.integers(len(images8)))
        shape = _glyph(images8[index], g)
        if rotation:
            turned = Image.fromarray((shape * 255).astype(np.uint8), "L").rotate(
                float(rng.uniform(-rotation, rotation)), Image.Resampling.BILINEAR
            )
            shape = np.asarray(turned, dtype=np.float32) / 255.0
        glyph_ink = shape > INK_THRESHOLD * max(float(shape.max()), 1e-6)
        if not glyph_ink.any():
            continue
        ink[y : y + g, x : x + g] = np.maximum(ink[y : y + g, x : x + g], shape)
        mask[y : y + g, x : x + g][glyph_ink] = 1 + int(labels[index])
        placed.append((x, y, x + g, y + g))
        out_labels.append(int(labels[index]))
    boxes = []
    for (x, y, x2, y2), label in zip(placed, out_labels, strict=True):
        rows, cols = np.nonzero(mask[y:y2, x:x2] == 1 + label)
        boxes.append((x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1))
    if clutter:
        _clutter(ink, placed, clutter, rng)
    return Layout(
        ink=ink,
        mask=mask,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(out_labels, dtype=np.int64),
    )


@dataclass(frozen=True)
class Look:
    """How a layout is drawn: paper and ink levels, blur, noise, polarity, JPEG quality (0: lossless)."""

    paper: float = 0.9
    contrast: float = 0.65  # how much darker the strongest ink is than the paper
    noise: float = 0.0  # sigma of Gaussian noise, fraction of full range
    blur: float = 0.0  # Gaussian blur radius of the ink, px
    invert: bool = False  # light ink on dark paper
    jpeg: int = 0


def render_layout(layout: Layout, look: Look, rng: np.random.Generator) -> np.ndarray:
    """The picture of `layout` as `look` says, (H, W) float in [0, 1], before any JPEG coding."""
    ink = layout.ink
    if look.blur:
        blurred = Image.fromarray((ink * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(look.blur))
        ink = np.asarray(blurred, dtype=np.float32) / 255.0
    pixels = look.paper - look.contrast * ink
    if look.noise:
        pixels = pixels + rng.normal(0.0, look.noise, ink.shape)
    pixels = np.clip(pixels, 0.0, 1.0)
    return 1.0 - pixels if look.invert else pixels


def picture(pixels: np.ndarray) -> Image.Image:
    """Pixels in [0, 1] as an 8-bit greyscale picture."""
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8), "L")


def encode_picture(pixels: np.ndarray, jpeg: int = 0) -> bytes:
    """Pixels in [0, 1] as a PNG, or as a JPEG of quality `jpeg`."""
    image = picture(pixels)
    buffer = io.BytesIO()
    if jpeg:
        image.save(buffer, format="JPEG", quality=jpeg)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


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
    layout = layout_scene(images8, labels, rng, size=size, num_digits=num_digits, max_digits=max_digits)
    paper = float(rng.uniform(0.75, 1.0))
    contrast = float(rng.uniform(0.55, 0.75))
    noise = rng.normal(0.0, float(rng.uniform(0.0, 0.04)), (size, size)).astype(np.float32)
    pixels = np.clip(paper - contrast * layout.ink + noise, 0.0, 1.0)
    return Scene(
        image=Image.fromarray((pixels * 255).round().astype(np.uint8), "L"),
        boxes=layout.boxes,
        labels=layout.labels,
        mask=layout.mask,
    )


def varied_scene(images8: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Scene:
    """A scene as users send them: any canvas from 64 to 512 px, digits of 10 to 64 px once fitted
    into 128, turned up to 20 degrees, strokes beside them, either polarity, blur, noise, JPEG,
    any contrast. Training data (the shifted suites in models/shifted.py measure the same ranges)."""
    size = round(float(np.exp(rng.uniform(np.log(64), np.log(512)))))
    scale = size / SCENE_SIZE
    low = float(rng.uniform(10, 40))
    high = min(float(MAX_FITTED_GLYPH), low * float(rng.uniform(1.2, 2.5)))
    smallest = max(8, round(low * scale))  # no digit under 8 px: the 8x8 originals carry no less
    glyph = (smallest, min(size, max(smallest + 1, round(high * scale))))
    layout = layout_scene(
        images8,
        labels,
        rng,
        size=size,
        max_digits=4 if high < 48 else 2,
        glyph=glyph,
        rotation=20.0 if rng.random() < 0.5 else 0.0,
        clutter=int(rng.integers(1, 5)) if rng.random() < 0.3 else 0,
    )
    paper, strength = float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.12, 1.0))
    # Heavy noise only over ink that stands out from it: faint ink under heavy noise is not a digit.
    heavy = 0.2 * min(1.0, strength / 0.6)
    look = Look(
        paper=paper,
        contrast=paper * strength,
        noise=float(rng.uniform(0.0, heavy)) if rng.random() < 0.5 else float(rng.uniform(0.0, 0.03)),
        blur=float(rng.uniform(0.5, 2.0)) * scale if rng.random() < 0.3 else 0.0,
        invert=bool(rng.random() < 0.5),
        jpeg=int(rng.integers(10, 60)) if rng.random() < 0.25 else 0,
    )
    pixels = render_layout(layout, look, rng)
    # A PNG decodes to its own pixels: only JPEG coding changes the picture a user sends.
    image = Image.open(io.BytesIO(encode_picture(pixels, look.jpeg))).convert("L") if look.jpeg else picture(pixels)
    return Scene(image=image, boxes=layout.boxes, labels=layout.labels, mask=layout.mask)


def varied_scenes(split: SceneSplit, count: int, seed: int) -> list[Scene]:
    """`count` varied scenes of the `split` digits, seeded."""
    images, labels = split_digits(split)
    rng = np.random.default_rng(seed)
    return [varied_scene(images, labels, rng) for _ in range(count)]


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
