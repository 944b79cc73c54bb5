"""Data that ships with scikit-learn, split and rendered the same way for training and tests."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels); images are 8x8 floats in [0, 1]."""
    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target
    )
    return x_train, y_train, x_test, y_test


def render_digit(image8: np.ndarray, size: int = 64, ink_on_paper: bool = True) -> Image.Image:
    """An 8x8 digit as a `size`x`size` greyscale picture, dark ink on light paper by default."""
    pil = Image.fromarray((np.clip(image8, 0, 1) * 255).astype(np.uint8), "L")
    pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    return Image.eval(pil, lambda v: 255 - v) if ink_on_paper else pil


def augment_digit(image8: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A randomly rendered variant: size, interpolation, stroke width, tilt, blur, polarity."""
    size = int(rng.integers(16, 72))
    method = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC][int(rng.integers(3))]
    pil = Image.fromarray((np.clip(image8, 0, 1) * 255).astype(np.uint8), "L").resize((size, size), method)
    pil = pil.crop((-size // 4, -size // 4, size + size // 4, size + size // 4))  # room to rotate
    pil = pil.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR)
    stroke = rng.integers(3)
    if stroke == 1 and size >= 32:
        pil = pil.filter(ImageFilter.MaxFilter(3))
    elif stroke == 2 and size >= 32:
        pil = pil.filter(ImageFilter.MinFilter(3))
    if rng.random() < 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    if rng.random() < 0.5:
        pil = Image.eval(pil, lambda v: 255 - v)
    return pil
