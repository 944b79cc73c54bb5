"""A labelled image set the repo draws offline: circles, squares, triangles and crosses in
varied size, position, stroke and polarity, as an uploaded data set would hold them.

    python -m models.training.shapes OUT.zip --per-class 60 --seed 0

The tests write it straight into the model store's data set layout (`write_dataset`) or pack it
as the zip archive an upload sends (`pack_zip`)."""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from contract.lifecycle import Dataset
from models.training.finetune import DATASET_FILE, IMAGES_DIR

SHAPES = ("circle", "cross", "square", "triangle")


def draw(shape: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One greyscale picture of `shape`, its size, place, rotation, stroke and polarity drawn from `rng`."""
    light = int(rng.integers(190, 256))
    dark = int(rng.integers(0, 70))
    paper, ink = (light, dark) if rng.random() < 0.5 else (dark, light)
    img = Image.new("L", (size, size), paper)
    pen = ImageDraw.Draw(img)
    radius = float(rng.uniform(0.18, 0.4)) * size
    cx = float(rng.uniform(radius + 2, size - radius - 2))
    cy = float(rng.uniform(radius + 2, size - radius - 2))
    stroke = int(rng.integers(2, 6))
    filled = rng.random() < 0.3 and shape != "cross"
    turn = float(rng.uniform(-0.3, 0.3))  # radians; squares stay squares, triangles point up-ish

    def polygon(corners: int, offset: float) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(offset + turn + 2 * math.pi * k / corners),
             cy + radius * math.sin(offset + turn + 2 * math.pi * k / corners))
            for k in range(corners)
        ]  # fmt: skip

    if shape == "circle":
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        pen.ellipse(box, fill=ink if filled else None, outline=ink, width=stroke)
    elif shape == "square":
        pen.polygon(polygon(4, math.pi / 4), fill=ink if filled else None, outline=ink, width=stroke)
    elif shape == "triangle":
        pen.polygon(polygon(3, -math.pi / 2), fill=ink if filled else None, outline=ink, width=stroke)
    elif shape == "cross":
        for angle in (turn, turn + math.pi / 2):
            dx, dy = radius * math.cos(angle), radius * math.sin(angle)
            pen.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=ink, width=stroke + 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    return img


def draw_set(per_class: int, seed: int = 0) -> dict[str, list[bytes]]:
    """`per_class` PNG pictures of every shape, the same for the same seed."""
    rng = np.random.default_rng(seed)
    pictures: dict[str, list[bytes]] = {}
    for shape in SHAPES:
        pictures[shape] = []
        for _ in range(per_class):
            buf = io.BytesIO()
            draw(shape, rng).save(buf, format="PNG")
            pictures[shape].append(buf.getvalue())
    return pictures


def pack_zip(pictures: dict[str, list[bytes]]) -> bytes:
    """The pictures as an upload's zip archive of `<label>/<n>.png` (fixed times: same pictures, same bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for label, images in sorted(pictures.items()):
            for n, data in enumerate(images):
                archive.writestr(zipfile.ZipInfo(f"{label}/{n}.png", date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def dataset_id(pictures: dict[str, list[bytes]]) -> str:
    """The content address of the pictures: the first 16 hex of their zip archive's sha256."""
    return hashlib.sha256(pack_zip(pictures)).hexdigest()[:16]


def write_dataset(datasets: Path, pictures: dict[str, list[bytes]]) -> Dataset:
    """Store the pictures under `datasets` (the store's data sets folder) in the data set layout:
    `<id>/dataset.json` and `<id>/images/<label>/<n>.png`, `<id>` as `dataset_id` gives it."""
    directory = datasets / dataset_id(pictures)
    for label, images in pictures.items():
        folder = directory / IMAGES_DIR / label
        folder.mkdir(parents=True, exist_ok=True)
        for n, data in enumerate(images):
            (folder / f"{n}.png").write_bytes(data)
    record = Dataset(
        id=directory.name,
        classes={label: len(images) for label, images in sorted(pictures.items())},
        images=sum(len(images) for images in pictures.values()),
        created=time.time(),
    )
    (directory / DATASET_FILE).write_text(record.model_dump_json(indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.training.shapes", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the zip archive to write")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    options.out.write_bytes(pack_zip(draw_set(options.per_class, options.seed)))
    print(f"wrote {options.out}: {len(SHAPES)} classes x {options.per_class} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
