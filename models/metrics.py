"""Quality metrics shared by the training scripts, the quality tests and `models.evaluate`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou


@dataclass(frozen=True)
class ClassificationReport:
    """Accuracy, macro precision/recall/F1 and the confusion matrix (rows: truth, columns: prediction);
    each class's own precision, recall and F1 (0 where undefined) beside them."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: np.ndarray
    class_precision: np.ndarray = field(default_factory=lambda: np.zeros(0))
    class_recall: np.ndarray = field(default_factory=lambda: np.zeros(0))
    class_f1: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def as_dict(self, labels: Sequence[str]) -> dict[str, object]:
        """JSON-able form, with the confusion matrix keyed by label."""
        return {
            "accuracy": self.accuracy,
            "macro_precision": self.precision,
            "macro_recall": self.recall,
            "macro_f1": self.f1,
            "labels": list(labels),
            "confusion": self.confusion.tolist(),
        }


def classification_report(truth: Sequence[int], predicted: Sequence[int], num_classes: int) -> ClassificationReport:
    """Macro averages over classes that occur in the truth or the predictions."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted_n = confusion.sum(axis=0).astype(np.float64)
    actual_n = confusion.sum(axis=1).astype(np.float64)
    present = (predicted_n + actual_n) > 0
    precision = np.divide(tp, predicted_n, out=np.zeros_like(tp), where=predicted_n > 0)
    recall = np.divide(tp, actual_n, out=np.zeros_like(tp), where=actual_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = max(int(confusion.sum()), 1)
    return ClassificationReport(
        accuracy=float(tp.sum() / total),
        precision=float(precision[present].mean()) if present.any() else 0.0,
        recall=float(recall[present].mean()) if present.any() else 0.0,
        f1=float(f1[present].mean()) if present.any() else 0.0,
        confusion=confusion,
        class_precision=precision,
        class_recall=recall,
        class_f1=f1,
    )


@dataclass(frozen=True)
class Detections:
    """One image's predictions or ground truth: boxes (N, 4) x1 y1 x2 y2, labels (N,), scores (N,)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (all points, as VOC 2010+ and COCO's per-threshold AP)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def detection_map(
    predictions: Sequence[Detections], truths: Sequence[Detections], num_classes: int, iou_threshold: float = 0.5
) -> tuple[float, dict[int, float]]:
    """mAP at `iou_threshold` over classes with ground truth, and the AP of each of those classes."""
    per_class: dict[int, float] = {}
    for cls in range(num_classes):
        records: list[tuple[float, bool]] = []
        positives = 0
        for pred, truth in zip(predictions, truths, strict=True):
            gt = truth.boxes[truth.labels == cls]
            positives += len(gt)
            keep = pred.labels == cls
            boxes = pred.boxes[keep]
            scores = pred.scores[keep] if pred.scores is not None else np.ones(len(boxes))
            if len(boxes) == 0:
                continue
            order = np.argsort(-scores, kind="stable")
            matched = np.zeros(len(gt), dtype=bool)
            ious = (
                box_iou(torch.as_tensor(boxes[order], dtype=torch.float32), torch.as_tensor(gt, dtype=torch.float32))
                .numpy()
                .reshape(len(boxes), len(gt))
            )
            for row, index in enumerate(order):
                hit = False
                if len(gt):
                    candidates = np.where(matched, -1.0, ious[row])
                    best = int(candidates.argmax())
                    if candidates[best] >= iou_threshold:
                        matched[best] = hit = True
                records.append((float(scores[index]), hit))
        if positives == 0:
            continue
        records.sort(key=lambda r: -r[0])
        hits = np.array([h for _, h in records], dtype=np.float64)
        tp = np.cumsum(hits)
        fp = np.cumsum(1.0 - hits)
        recall = tp / positives if len(records) else np.zeros(0)
        precision = tp / np.maximum(tp + fp, 1e-12) if len(records) else np.zeros(0)
        per_class[cls] = _average_precision(recall, precision)
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return mean, per_class


def segmentation_confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel confusion matrix of one mask pair (rows: truth); sum it over a data set."""
    if truth.shape != predicted.shape:
        raise ValueError(f"mask shapes differ: {truth.shape} vs {predicted.shape}")
    index = truth.astype(np.int64).ravel() * num_classes + predicted.astype(np.int64).ravel()
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU over classes present in truth or prediction, and the IoU of every class (NaN if absent)."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    present = union > 0
    return (float(np.nanmean(iou[present])) if present.any() else 0.0), iou
