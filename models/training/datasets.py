"""A stored data set as training reads it: its labels and its images, each with its label's index.

The layout of one data set's directory (the model store's `datasets/<id>/`, deployments/store.py):

    dataset.json               contract.lifecycle.Dataset (the labels and how many images each kept)
    images/<label>/<n>.png     n = 0 .. count-1: every kept image, decoded and re-encoded as PNG

deployments/datasets.py writes it and this module reads it: both use the names below. No Ray,
no HTTP, no torch."""

from __future__ import annotations

from pathlib import Path

from contract.lifecycle import Dataset

DATASET_FILE = "dataset.json"
IMAGES_DIR = "images"


def image_path(directory: Path, label: str, n: int) -> Path:
    """Where the `n`th kept image of `label` lives in the data set at `directory`."""
    return directory / IMAGES_DIR / label / f"{n}.png"


def read_dataset(directory: Path) -> Dataset:
    """The record of the data set at `directory` (FileNotFoundError when there is none)."""
    return Dataset.model_validate_json((directory / DATASET_FILE).read_bytes())


def load_dataset(directory: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The data set at `directory`: its labels, sorted (a label's index is its class index), and
    every image as (PNG path, label index), in a stable order (label, then n)."""
    dataset = read_dataset(directory)
    labels = sorted(dataset.classes)
    items = [
        (image_path(directory, label, n), index)
        for index, label in enumerate(labels)
        for n in range(dataset.classes[label])
    ]
    missing = [path for path, _ in items if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"data set {dataset.id} lacks {len(missing)} of its images, e.g. {missing[0].parent.name}/{missing[0].name}"
        )
    return labels, items
