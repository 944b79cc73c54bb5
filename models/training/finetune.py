"""Fine-tuning a registered classifier on an uploaded data set: the pieces a training worker runs.

Pure PyTorch (deployments/training.py runs them under Ray Train). Every image goes through the
base model's own decode and `preprocess`, so training sees exactly the tensors serving will.

A data set directory (deployments/store.py places it) holds `dataset.json`
(contract.lifecycle.Dataset) and `images/<label>/<n>.png`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torchvision.transforms.v2 import functional as tvf

from contract.lifecycle import ClassMetrics, CurvePoint, Dataset, EvaluationReport
from models.images import decode_image
from models.metrics import classification_report
from models.registry import Preprocess
from models.trained import logits

DATASET_FILE = "dataset.json"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class LabelledImages:
    """A data set's images on disk: `labels[i]` indexes `categories` (sorted label names)."""

    categories: tuple[str, ...]
    files: tuple[Path, ...]
    labels: tuple[int, ...]


def read_dataset(directory: Path) -> LabelledImages:
    """The images of the stored data set in `directory`, class by class in sorted label order."""
    record = Dataset.model_validate_json((directory / DATASET_FILE).read_text())
    categories = tuple(sorted(record.classes))
    files: list[Path] = []
    labels: list[int] = []
    for index, label in enumerate(categories):
        found = sorted((directory / IMAGES_DIR / label).glob("*.png"), key=lambda p: (len(p.name), p.name))
        files += found
        labels += [index] * len(found)
    return LabelledImages(categories, tuple(files), tuple(labels))


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices: each class split on its own, so both splits hold every class
    in proportion; the same labels, fraction and seed give the same split."""
    # By hand rather than scikit-learn's StratifiedShuffleSplit, which refuses a validation split
    # smaller than the number of classes: here every class of two or more images keeps at least
    # one image on each side, however small the fraction.
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        members = np.array(by_class[label])
        rng.shuffle(members)
        held = min(max(1, round(len(members) * val_fraction)), len(members) - 1) if len(members) > 1 else 0
        val += members[:held].tolist()
        train += members[held:].tolist()
    return sorted(train), sorted(val)


def augment(img: Image.Image, generator: torch.Generator) -> Image.Image:
    """A small random change that keeps the label: tilt, shift, scale, brightness and contrast.
    The corners' colour fills what the tilt uncovers, so the background stays the background."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    fill = img.getpixel((0, 0))
    fill_value: list[float] = list(fill) if isinstance(fill, tuple) else [float(fill or 0)]
    shift = [round(uniform(-0.08, 0.08) * img.width), round(uniform(-0.08, 0.08) * img.height)]
    out = tvf.affine(
        img,
        angle=uniform(-12.0, 12.0),
        translate=shift,
        scale=uniform(0.9, 1.1),
        shear=[0.0, 0.0],
        interpolation=tvf.InterpolationMode.BILINEAR,
        fill=fill_value,
    )
    out = tvf.adjust_brightness(out, uniform(0.8, 1.2))
    adjusted: Image.Image = tvf.adjust_contrast(out, uniform(0.8, 1.2))
    return adjusted


class ImageSet(TorchDataset[tuple[torch.Tensor, int]]):
    """Some images of a data set as (input tensor, label): decoded as serving decodes (once, then
    kept), optionally augmented, then the base model's `preprocess`."""

    def __init__(
        self,
        data: LabelledImages,
        indices: Sequence[int],
        mode: str,
        preprocess: Preprocess,
        generator: torch.Generator | None = None,
    ) -> None:
        self.data = data
        self.indices = list(indices)
        self.mode = mode
        self.preprocess = preprocess
        self.generator = generator  # augmentation on when set
        self._decoded: dict[int, Image.Image] = {}
        self._inputs: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def _image(self, index: int) -> Image.Image:
        if index not in self._decoded:
            self._decoded[index] = decode_image(self.data.files[index].read_bytes(), self.mode)
        return self._decoded[index]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        index = self.indices[position]
        label = self.data.labels[index]
        if self.generator is not None:
            return self.preprocess(augment(self._image(index), self.generator)), label
        if index not in self._inputs:  # unaugmented inputs never change: computed once
            self._inputs[index] = self.preprocess(self._image(index))
        return self._inputs[index], label


def freeze_backbone(module: nn.Module, head: str) -> None:
    """Train the new head only: every other parameter is frozen."""
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(name.startswith(f"{head}."))


def train_mode(module: nn.Module, head: str, frozen_backbone: bool) -> None:
    """Training mode; a frozen backbone keeps its batch-norm statistics (evaluation mode) too."""
    module.train()
    if frozen_backbone:
        for name, layer in module.named_modules():
            if name and not name.startswith(head) and isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()


Step = Callable[[int, float], bool]
"""Called after each optimizer step with (images in the batch, its loss); False stops the epoch."""


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    on_step: Step,
) -> tuple[float, bool]:
    """One pass over `batches`: (mean loss per image, whether it ran to the end)."""
    loss_fn = nn.CrossEntropyLoss()
    total, seen = 0.0, 0
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(logits(model(inputs)), targets)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        total += value * len(targets)
        seen += len(targets)
        if not on_step(len(targets), value):
            return total / max(seen, 1), False
    return total / max(seen, 1), True


@torch.inference_mode()
def predict(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[list[int], list[int]]:
    """(true labels, predicted labels) over `batches`, in evaluation mode."""
    model.eval()
    truth: list[int] = []
    predicted: list[int] = []
    for inputs, targets in batches:
        truth += targets.tolist()
        predicted += model(inputs.to(device)).argmax(dim=1).cpu().tolist()
    return truth, predicted


def evaluation_report(
    truth: Sequence[int],
    predicted: Sequence[int],
    categories: Sequence[str],
    curve: Sequence[CurvePoint],
    train_images: int,
    val_images: int,
) -> EvaluationReport:
    """The held-out measure of a trained version: accuracy, each class's precision, recall and F1,
    their macro averages, the confusion matrix and the training curve."""
    report = classification_report(truth, predicted, len(categories))
    support = report.confusion.sum(axis=1)
    return EvaluationReport(
        accuracy=report.accuracy,
        macro_precision=report.precision,
        macro_recall=report.recall,
        macro_f1=report.f1,
        per_class={
            label: ClassMetrics(
                precision=float(report.class_precision[i]),
                recall=float(report.class_recall[i]),
                f1=float(report.class_f1[i]),
                support=int(support[i]),
            )
            for i, label in enumerate(categories)
        },
        labels=list(categories),
        confusion_matrix=report.confusion.tolist(),
        curve=list(curve),
        train_images=train_images,
        val_images=val_images,
    )
