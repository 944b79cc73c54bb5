"""Shared test data: real images made from data that ships with scikit-learn."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.training.data import digits_split, render_digit


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    """Encode a PIL image to bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="session")
def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The held-out split the bundled digits model never trained on: (8x8 images, labels)."""
    _, _, x_test, y_test = digits_split()
    return x_test, y_test


@pytest.fixture(scope="session")
def digit_pngs(held_out_digits: tuple[np.ndarray, np.ndarray]) -> list[tuple[bytes, int]]:
    """Twenty held-out digits as 64x64 dark-on-light PNG pictures, with their labels."""
    images, labels = held_out_digits
    return [(encode(render_digit(images[i])), int(labels[i])) for i in range(20)]


@pytest.fixture(scope="session")
def photo_jpeg() -> bytes:
    """A 640x427 colour photo (scikit-learn's sample 'china.jpg') re-encoded as JPEG."""
    from sklearn.datasets import load_sample_image

    return encode(Image.fromarray(load_sample_image("china.jpg")), "JPEG", quality=90)
