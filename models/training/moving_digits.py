"""Moving-digit clips: a scikit-learn digit drifting across a small canvas in one of 8 directions.

The data of the bundled video classifier. Each split of clips draws only on its own digits, from
its own seed: "train" on the whole training split (`data.digits_split`), "fit" and "validation"
on the two parts of it (`data.digits_validation_split`), "test" on the held-out split, so a test
clip never shows a digit the model trained on, and a validation clip none that it fitted.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from models import video
from models.training.scenes import SceneSplit, split_digits

# The model's own geometry and labels, so data and model cannot drift apart.
DIRECTIONS = video.DIRECTIONS
CLIP_LENGTH = video.CLIP_LENGTH
CANVAS = video.INPUT_SIZE
MIN_GLYPH, MAX_GLYPH = 16, 24
MIN_SPEED, MAX_SPEED = 1.0, 3.0  # pixels per frame along the direction of travel
# The digit's centre stays this far inside the canvas, so at least half of it is always in view.
MARGIN = 1.0
TRAIN_SEED, TEST_SEED, VALIDATION_SEED = 21, 22, 23  # "fit" clips use TRAIN_SEED
VARIED_SEED = 24  # varied training clips (`varied_clips`), plus the training run's own seed
VARIED_LENGTH = (8, 32)  # frames
VARIED_SPEED = (0.3, 6.0)  # px per frame
VARIED_NOISE = 0.15


def direction_vector(direction: int) -> tuple[float, float]:
    """Unit (dx, dy) of `DIRECTIONS[direction]` in image coordinates (y down: north moves up)."""
    angle = math.radians(45 * direction)
    return math.sin(angle), -math.cos(angle)


def _glyph(image8: np.ndarray, size: int) -> Image.Image:
    pil = Image.fromarray((np.clip(image8, 0, 1) * 255).astype(np.uint8), "L")
    return pil.resize((size, size), Image.Resampling.BICUBIC)


def make_clip(
    image8: np.ndarray,
    direction: int,
    rng: np.random.Generator,
    *,
    canvas: int = CANVAS,
    length: int = CLIP_LENGTH,
    glyph: tuple[int, int] = (MIN_GLYPH, MAX_GLYPH),
    speed: tuple[float, float] = (MIN_SPEED, MAX_SPEED),
    noise: tuple[float, float] = (0.0, 0.05),
) -> np.ndarray:
    """One clip (length, canvas, canvas) uint8: the digit moving at a random speed from a random start.

    Subpixel motion (bilinear resampling), a random paper and ink level in either polarity, and
    light Gaussian noise, so the model has to follow the digit rather than a pixel pattern.
    """
    size = int(rng.integers(glyph[0], glyph[1] + 1))
    pace = float(rng.uniform(*speed))
    ux, uy = direction_vector(direction)
    step = (ux * pace, uy * pace)
    travel = [s * (length - 1) for s in step]
    lo, hi = MARGIN, canvas - MARGIN
    # Any start whose whole path keeps the centre inside [lo, hi] on both axes.
    start = [float(rng.uniform(lo - min(0.0, t), hi - max(0.0, t))) for t in travel]
    shape = _glyph(image8, size)
    paper, ink = float(rng.uniform(0.0, 0.3)), float(rng.uniform(0.7, 1.0))
    if rng.random() < 0.5:
        paper, ink = 1.0 - paper, 1.0 - ink
    sigma = float(rng.uniform(*noise))
    frames = np.empty((length, canvas, canvas), dtype=np.uint8)
    for t in range(length):
        cx, cy = start[0] + t * step[0], start[1] + t * step[1]
        # AFFINE maps output pixels back to glyph pixels: a pure (subpixel) translation.
        offset = (1.0, 0.0, size / 2 - cx, 0.0, 1.0, size / 2 - cy)
        placed = shape.transform((canvas, canvas), Image.Transform.AFFINE, offset, Image.Resampling.BILINEAR)
        coverage = np.asarray(placed, dtype=np.float32) / 255.0
        frame = paper + (ink - paper) * coverage + rng.normal(0.0, sigma, coverage.shape)
        frames[t] = np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames


def _draws(
    split: SceneSplit, count: int, seed: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """Digits of `split`, `count` directions balanced over the 8, the digits picked, and the stream."""
    images, labels = split_digits(split)
    default_seed = {"train": TRAIN_SEED, "fit": TRAIN_SEED, "validation": VALIDATION_SEED, "test": TEST_SEED}[split]
    rng = np.random.default_rng(seed if seed is not None else default_seed)
    directions = rng.permutation(np.arange(count) % len(DIRECTIONS))
    picks = rng.integers(0, len(images), size=count)
    return images[picks], directions.astype(np.int64), labels[picks].astype(np.int64), rng


def make_clips(split: SceneSplit, count: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` clips (N, T, H, W) uint8 balanced over directions, their directions and their digits.

    `split` picks the digits (as `scenes.split_digits`); the seed defaults to the split's own.
    """
    images, directions, labels, rng = _draws(split, count, seed)
    clips = np.stack([make_clip(image, int(d), rng) for image, d in zip(images, directions, strict=True)])
    return clips, directions, labels


def varied_clips(split: SceneSplit, count: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` clips as users send them, and their directions: VARIED_LENGTH frames at VARIED_SPEED
    px per frame, on canvases of 48 to 128 px with digits of a third to a half of 48 px scaled
    alike, noise up to VARIED_NOISE. Training data (models/shifted.py measures the same ranges)."""
    images, directions, _, rng = _draws(split, count, seed)
    clips = []
    for image, direction in zip(images, directions, strict=True):
        canvas = int(rng.choice([CANVAS, CANVAS, 96, 128]))
        scale = canvas / CANVAS if rng.random() < 0.5 else 1.0  # bigger canvases: digits scaled too, or not
        length = int(rng.integers(VARIED_LENGTH[0], VARIED_LENGTH[1] + 1))
        # Log-uniform, so slow drifts are as common as fast moves; never farther than the canvas allows.
        pace = min(float(np.exp(rng.uniform(*np.log(VARIED_SPEED)))), (canvas - 2 * MARGIN - 1) / (length - 1))
        clips.append(
            make_clip(
                image,
                int(direction),
                rng,
                canvas=canvas,
                length=length,
                glyph=(round(MIN_GLYPH * scale), round(MAX_GLYPH * scale)),
                speed=(pace, pace),
                noise=(0.0, VARIED_NOISE),
            )
        )
    return clips, directions


def clip_frames(clip: np.ndarray) -> list[Image.Image]:
    """A (T, H, W) uint8 clip as greyscale PIL frames."""
    return [Image.fromarray(frame, "L") for frame in clip]
