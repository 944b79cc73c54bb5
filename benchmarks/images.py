"""The benchmark images: photos that ship with scikit-learn and scikit-image, re-encoded as JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SIZES = {"640x480": (640, 480), "224x224": (224, 224)}


def _photos() -> list[Image.Image]:
    """Every colour photo the two packages ship (no download)."""
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    try:
        from skimage import data

        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            photos.append(Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB"))
    except ImportError:  # scikit-image is optional: the two scikit-learn photos suffice
        pass
    return photos


def jpeg_images(size: str, quality: int = 90) -> list[bytes]:
    """The photos cropped and scaled to `size` ("640x480" or "224x224"), as JPEG bytes."""
    target = SIZES[size]
    out = []
    for photo in _photos():
        fitted = ImageOps.fit(photo, target, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        fitted.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def write_images(directory: Path, size: str) -> list[Path]:
    """`jpeg_images(size)` as files in `directory` (load generators send a file as the body)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, data in enumerate(jpeg_images(size)):
        path = directory / f"photo{index}_{size}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths
