"""Data that ships with scikit-learn, split and rendered the same way for training and tests."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SPLIT_SEED = 0
TEST_FRACTION = 0.2
# Validation is carved from the training portion, so the test split stays exactly as before.
VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 1
# What "held-out" means for every figure measured on these digits; the reports carry it.
HELD_OUT_NOTE = (
    "Held-out samples, not held-out writers: scikit-learn's digits are 1,797 8x8 images written by "
    "13 people (the test set of UCI's optdigits; load_digits().DESCR) and carry no writer ids, so the "
    "stratified random split puts each writer's hand in both train and test. The figure measures "
    "generalisation to new samples of seen writers, not to new writers."
)
MONITORING_NOTE = "watched on the validation split only; the test split evaluated once, after training"


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels); images are 8x8 floats in [0, 1]."""
    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target
    )
    return x_train, y_train, x_test, y_test


def digits_validation_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fit_images, fit_labels, val_images, val_labels, test_images, test_labels): `digits_split`'s training portion split again."""
    x_train, y_train, x_test, y_test = digits_split()
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=VALIDATION_FRACTION, random_state=VALIDATION_SEED, stratify=y_train
    )
    return x_fit, y_fit, x_val, y_val, x_test, y_test


def split_record(fit: int, validation: int, test: int) -> dict[str, object]:
    """The split as the reports record it: sizes, fractions, seeds."""
    return {
        "test_fraction": TEST_FRACTION,
        "seed": SPLIT_SEED,
        "validation_fraction_of_training": VALIDATION_FRACTION,
        "validation_seed": VALIDATION_SEED,
        "stratified": True,
        "sizes": {"train": fit, "validation": validation, "test": test},
    }


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
