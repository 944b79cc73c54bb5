"""Train digits_detector on digit scenes and write models/weights/digits_detector.{safetensors,json}.

Train scenes use only the training split of scikit-learn's digits, less a validation split;
--eval-every watches scenes of the validation digits only, and the held-out mAP is measured once,
after training, on scenes of held-out digits, through the served preprocess, forward and postprocess.
Reproducible (seeded); a few minutes on 2 CPU cores:
    python -m models.training.train_digits_detector
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.ops import box_iou

from contract.answers import DetectionPrediction
from contract.params import DetectionParams
from models.detectors import (
    DIGIT_CATEGORIES,
    DIGITS_WEIGHTS_FILE,
    MIN_SCORE,
    SCENE_SIDE,
    STRIDE,
    DigitsDetector,
    centre_peaks,
    detection_postprocess,
    digits_forward,
    scene_geometry,
    scene_preprocess,
)
from models.metrics import Detections, detection_map
from models.registry import Item
from models.training.data import HELD_OUT_NOTE, MONITORING_NOTE, split_record
from models.training.scenes import (
    TEST_SEED,
    TRAIN_SEED,
    VALIDATION_SEED,
    VARIED_NOTE,
    VARIED_SEED,
    Scene,
    digit_scenes,
    split_digits,
    varied_scenes,
)
from models.weights import BUNDLED_DIR, sha256_file

NUM_CLASSES = len(DIGIT_CATEGORIES)
CELLS = SCENE_SIDE // STRIDE
MAX_OBJECTS = 8
IGNORE = -100  # cross-entropy ignore index: cells away from any centre
HELD_OUT_SCENES = 300
VALIDATION_SCENES = 300
EVAL_PARAMS = {"score_threshold": 0.0, "max_detections": 100}  # AP needs the whole ranking


def _embed(scene: Scene, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """The scene on a larger sheet of its own paper (smaller digits once fitted, another aspect ratio)."""
    width, height = (int(v) for v in rng.integers(SCENE_SIDE, 2 * SCENE_SIDE, 2))
    x, y = int(rng.integers(0, width - SCENE_SIDE + 1)), int(rng.integers(0, height - SCENE_SIDE + 1))
    pixels = np.asarray(scene.image)
    paper = int(np.median(pixels))
    sheet = np.clip(rng.normal(paper, float(pixels[pixels >= paper - 10].std()), (height, width)), 0, 255)
    sheet = sheet.round().astype(np.uint8)
    sheet[y : y + SCENE_SIDE, x : x + SCENE_SIDE] = pixels
    return Image.fromarray(sheet, "L"), scene.boxes + np.array([x, y, x, y], dtype=np.float32)


def _targets(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre heatmap (1, H, W), class map (H, W; -100 ignored), and per object its cell and regression targets."""
    heat = np.zeros((1, CELLS, CELLS), dtype=np.float32)
    classes = np.full((CELLS, CELLS), IGNORE, dtype=np.int64)
    cells = np.full(MAX_OBJECTS, -1, dtype=np.int64)
    regress = np.zeros((MAX_OBJECTS, 4), dtype=np.float32)
    grid = np.arange(CELLS, dtype=np.float32)
    for n, (box, label) in enumerate(zip(boxes[:MAX_OBJECTS], labels[:MAX_OBJECTS], strict=True)):
        w, h = (box[2] - box[0]) / STRIDE, (box[3] - box[1]) / STRIDE
        cx, cy = (box[0] + box[2]) / 2 / STRIDE, (box[1] + box[3]) / 2 / STRIDE
        ix, iy = min(int(cx), CELLS - 1), min(int(cy), CELLS - 1)
        # Gaussian around the centre cell, wider for bigger digits (CenterNet, elliptic as in TTFNet).
        sx, sy = max(w / 6, 0.7), max(h / 6, 0.7)
        blob = np.exp(-((grid[None, :] - ix) ** 2) / (2 * sx**2) - ((grid[:, None] - iy) ** 2) / (2 * sy**2))
        heat[0] = np.maximum(heat[0], blob)
        # The class is learnt on the 3x3 cells around the centre: more signal than the centre alone.
        classes[max(iy - 1, 0) : iy + 2, max(ix - 1, 0) : ix + 2] = label
        cells[n] = iy * CELLS + ix
        regress[n] = (math.log(max(w, 0.25)), math.log(max(h, 0.25)), cx - ix, cy - iy)
    return heat, classes, cells, regress


def canvas_boxes(image: Image.Image, boxes: np.ndarray) -> np.ndarray:
    """Boxes in `image`'s pixels -> in the model's 128x128 canvas (scene_geometry, inverted)."""
    a, _, c, _, e, f = scene_geometry(image.width, image.height)
    return (boxes - np.array([c, f, c, f], dtype=np.float32)) / np.array([a, e, a, e], dtype=np.float32)


def build_dataset(
    scenes: Sequence[Scene], embed_fraction: float, seed: int, varied: Sequence[Scene] = ()
) -> tuple[torch.Tensor, ...]:
    """Served inputs and CenterNet targets of every scene (a fraction placed on larger sheets), then the varied ones."""
    rng = np.random.default_rng(seed)
    columns: list[list[torch.Tensor]] = [[], [], [], [], []]
    placed = [(s.image, s.boxes) if rng.random() >= embed_fraction else _embed(s, rng) for s in scenes]
    placed += [(s.image, s.boxes) for s in varied]
    for scene, (image, boxes) in zip([*scenes, *varied], placed, strict=True):
        targets = _targets(canvas_boxes(image, boxes), scene.labels)
        for column, value in zip(columns, (scene_preprocess(image), *map(torch.from_numpy, targets)), strict=True):
            column.append(value)
    return tuple(torch.stack(column) for column in columns)


def focal_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss over the heatmap, per object."""
    prob = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1.0).float()
    pos = torch.log(prob) * (1 - prob) ** 2 * positive
    neg = torch.log(1 - prob) * prob**2 * (1 - heat) ** 4 * (1 - positive)
    return -(pos.sum() + neg.sum()) / positive.sum().clamp(min=1.0)


def loss_fn(
    heads: torch.Tensor, heat: torch.Tensor, classes: torch.Tensor, cells: torch.Tensor, regress: torch.Tensor
) -> torch.Tensor:
    """Heatmap focal loss, class cross-entropy near the centres, L1 on log sizes and offsets at the centres."""
    valid = cells >= 0
    index = cells.clamp(min=0).unsqueeze(1).expand(-1, 4, -1)
    predicted = heads[:, 1 + NUM_CLASSES :].flatten(2).gather(2, index).transpose(1, 2)
    l1 = (F.l1_loss(predicted, regress, reduction="none").sum(-1) * valid).sum() / valid.sum().clamp(min=1)
    ce = F.cross_entropy(heads[:, 1 : 1 + NUM_CLASSES], classes, ignore_index=IGNORE)
    return focal_loss(heads[:, :1], heat) + ce + l1


def as_detections(result: DetectionPrediction) -> Detections:
    """A detector's answer as metrics.Detections."""
    found = result.detections
    return Detections(
        boxes=np.array([d.box for d in found], dtype=np.float32).reshape(-1, 4),
        labels=np.array([d.index for d in found], dtype=np.int64),
        scores=np.array([d.score for d in found], dtype=np.float32),
    )


def evaluate(model: nn.Module, scenes: Sequence[Scene]) -> tuple[float, dict[int, float]]:
    """mAP@0.5 through the served path: preprocess, batched forward, postprocess in original pixels."""
    postprocess = detection_postprocess(DIGIT_CATEGORIES, scene_geometry, frozenset())
    predictions: list[Detections] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(scenes), 64):
            chunk = scenes[start : start + 64]
            outputs = digits_forward(model, [scene_preprocess(s.image) for s in chunk])
            items = [Item(DetectionParams(**EVAL_PARAMS), (s.image.width, s.image.height)) for s in chunk]
            answers = cast(Sequence[DetectionPrediction], postprocess(outputs, items))
            predictions.extend(as_detections(result) for result in answers)
    truths = [Detections(boxes=s.boxes, labels=s.labels) for s in scenes]
    return detection_map(predictions, truths, NUM_CLASSES, iou_threshold=0.5)


def fit_calibration(model: DigitsDetector, scenes: Sequence[Scene]) -> tuple[float, float, int]:
    """Platt scaling of the centre logit: (a, b) so that sigmoid(a * logit + b) is the chance a peak is a digit.

    A peak counts as a digit when its box overlaps an unmatched true box with IoU >= 0.5 (peaks
    taken by score, each digit matched once, as mAP matches). Returns a, b and the peaks fitted.
    """
    logits: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(scenes), 64):
            chunk = scenes[start : start + 64]
            scores, _, boxes = centre_peaks(model(torch.stack([scene_preprocess(s.image) for s in chunk])))
            for scene, row_scores, row_boxes in zip(chunk, scores, boxes, strict=True):
                truth = canvas_boxes(scene.image, scene.boxes)
                keep = row_scores >= MIN_SCORE  # sorted by score: the order matching takes
                ious = box_iou(row_boxes[keep], torch.from_numpy(truth)).numpy().reshape(int(keep.sum()), len(truth))
                matched = np.zeros(len(truth), dtype=bool)
                hit = np.zeros(len(ious), dtype=bool)
                for n, row in enumerate(ious):
                    candidates = np.where(matched, -1.0, row)
                    if len(candidates) and candidates.max() >= 0.5:
                        matched[int(candidates.argmax())] = hit[n] = True
                logits.append(torch.logit(row_scores[keep], eps=1e-6).numpy())
                hits.append(hit)
    x, y = np.concatenate(logits)[:, None], np.concatenate(hits)
    fit = LogisticRegression(C=1e4).fit(x, y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0]), len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--varied", type=int, default=4000, help="varied scenes (any canvas, size, polarity, noise)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--embed-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0, help="print the validation mAP every N epochs")
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    start, cpu_start = time.perf_counter(), time.process_time()
    validation = digit_scenes("validation", VALIDATION_SCENES)
    varied_validation = varied_scenes("validation", VALIDATION_SCENES, VARIED_SEED)
    varied = varied_scenes("fit", args.varied, VARIED_SEED + 1 + args.seed)
    data = build_dataset(digit_scenes("fit", args.scenes), args.embed_fraction, args.seed, varied)
    inputs = data[0]
    print(f"data: {len(inputs)} scenes in {time.perf_counter() - start:.1f} s", flush=True)
    model = DigitsDetector(NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(inputs) / args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for i in range(0, len(inputs), args.batch):
            idx = order[i : i + args.batch]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[idx]), *(column[idx] for column in data[1:]))
            torch.autograd.backward(loss)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        line = f"epoch {epoch + 1}: loss {total / len(inputs):.4f} ({time.perf_counter() - start:.0f} s)"
        if args.eval_every and (epoch + 1) % args.eval_every == 0:
            line += f" validation mAP@0.5 {evaluate(model, validation)[0]:.4f}"
            line += f", varied {evaluate(model, varied_validation)[0]:.4f}"
        print(line, flush=True)

    # Fitted on validation scenes of both kinds, never on the test split; ranking (and mAP) unchanged.
    scale, shift, peaks = fit_calibration(model, [*validation, *varied_validation])
    model.centre_calibration.copy_(torch.tensor([scale, shift]))
    train_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    val_map = evaluate(model, validation)[0]
    varied_map = evaluate(model, varied_validation)[0]
    # The only look at the test split: after training, for the published figure.
    mean_ap, per_class = evaluate(model, digit_scenes("test", HELD_OUT_SCENES))
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / DIGITS_WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    report = {
        "model": "digits_detector",
        "data": (
            "models.training.scenes.digit_scenes: 128x128 scenes of 1-4 scikit-learn digits (20-44 px) "
            f"with exact boxes; train scenes (seed {TRAIN_SEED}) use only the training split of the digits "
            f"less its validation digits, validation scenes (seed {VALIDATION_SEED}) only those, "
            f"held-out scenes (seed {TEST_SEED}) only the held-out split"
        ),
        "split": split_record(*(len(split_digits(s)[1]) for s in ("fit", "validation", "test"))),
        "train_scenes": args.scenes,
        "varied_train_scenes": args.varied,
        "varied": VARIED_NOTE,
        "embed_fraction": args.embed_fraction,
        "held_out_scenes": HELD_OUT_SCENES,
        "held_out_map50": round(mean_ap, 4),
        "held_out_ap50_per_class": {DIGIT_CATEGORIES[c]: round(ap, 4) for c, ap in sorted(per_class.items())},
        "held_out_note": HELD_OUT_NOTE,
        "validation_scenes": VALIDATION_SCENES,
        "validation_map50": round(val_map, 4),
        "varied_validation_map50": round(varied_map, 4),
        "centre_calibration": {
            "scale": round(scale, 4),
            "shift": round(shift, 4),
            "peaks": peaks,
            "fitted_on": "the validation scenes of both kinds (Platt scaling of the centre logit)",
        },
        "monitoring": MONITORING_NOTE,
        "eval_parameters": EVAL_PARAMS,
        "epochs": args.epochs,
        "batch": args.batch,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),  # wall time depends on what else shares the cores
        "sha256": sha256_file(weights_path),
    }
    (args.out / "digits_detector.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
