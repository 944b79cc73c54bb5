"""Train digits_segmenter on digit scenes and write models/weights/digits_segmenter.{safetensors,json}.

Reproducible (seeded scenes, crops and initialisation); a few minutes on 2 CPU cores:
    python -m models.training.train_digits_segmenter

Train scenes use the training digits less a validation split; --eval-every watches scenes of the
validation digits only, and the held-out (test) scenes are evaluated once, after training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from models.metrics import mean_iou, segmentation_confusion
from models.segmenters import (
    DIGITS_CATEGORIES,
    DIGITS_INPUT_SIZE,
    DIGITS_WEIGHTS_FILE,
    DigitsUNet,
    class_mask,
    digit_scene_tensor,
    segmentation_forward,
)
from models.training.data import HELD_OUT_NOTE, MONITORING_NOTE, split_record
from models.training.scenes import (
    MAX_FITTED_GLYPH,
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


def build_dataset(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """Scenes preprocessed as the server does, their class-index masks and digit boxes at input size."""
    xs = torch.stack([digit_scene_tensor(scene.image) for scene in scenes])
    size = (DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE)
    masks, boxes = [], []
    for scene in scenes:
        mask, scale = scene.mask, np.array([size[0] / scene.image.width, size[1] / scene.image.height] * 2)
        if mask.shape != size:  # a varied scene of another size: its mask as the input is resized
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
        masks.append(torch.from_numpy(np.array(mask)))  # uint8: a quarter of int64's memory
        boxes.append(scene.boxes * scale.astype(np.float32))
    return xs, torch.stack(masks), boxes


def crop_batch(
    xs: torch.Tensor, ys: torch.Tensor, boxes: list[np.ndarray], crop: int, batch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` crops of `crop` pixels, each around a random digit of a random scene.

    Crops spend the compute on ink rather than on empty paper; a crop larger than the
    largest digit still shows a whole digit and some of its neighbours.
    """
    if crop >= DIGITS_INPUT_SIZE:
        idx = torch.as_tensor(rng.integers(len(xs), size=batch))
        return xs[idx], ys[idx].long()
    x_out = torch.empty(batch, 1, crop, crop)
    y_out = torch.empty(batch, crop, crop, dtype=torch.long)
    limit = DIGITS_INPUT_SIZE - crop
    for b in range(batch):
        i = int(rng.integers(len(xs)))
        if len(boxes[i]) and rng.random() < 0.9:
            x1, y1, x2, y2 = boxes[i][int(rng.integers(len(boxes[i])))]
            cx = (x1 + x2) / 2 + rng.uniform(-crop / 4, crop / 4)
            cy = (y1 + y2) / 2 + rng.uniform(-crop / 4, crop / 4)
            left = int(np.clip(round(cx - crop / 2), 0, limit))
            top = int(np.clip(round(cy - crop / 2), 0, limit))
        else:
            left, top = int(rng.integers(limit + 1)), int(rng.integers(limit + 1))
        x_out[b] = xs[i, :, top : top + crop, left : left + crop]
        y_out[b] = ys[i, top : top + crop, left : left + crop]
    return x_out, y_out


def evaluate(model: nn.Module, scenes: list[Scene]) -> tuple[float, np.ndarray]:
    """Mean IoU over all classes, and each class's IoU, of the predicted class maps at each picture's size."""
    confusion = np.zeros((len(DIGITS_CATEGORIES), len(DIGITS_CATEGORIES)), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(scenes), 50):
            chunk = scenes[i : i + 50]
            maps = segmentation_forward(model, [digit_scene_tensor(s.image) for s in chunk])
            for scene, class_map in zip(chunk, maps, strict=True):
                mask = np.asarray(class_mask(class_map, scene.image.size))  # as served: at the picture's size
                confusion += segmentation_confusion(scene.mask, mask, len(DIGITS_CATEGORIES))
    return mean_iou(confusion)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--varied", type=int, default=3000, help="varied scenes (any canvas, size, polarity, noise)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--crop", type=int, default=MAX_FITTED_GLYPH)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--test-scenes", type=int, default=300)
    parser.add_argument("--validation-scenes", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=0, help="steps between validation checks (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args()
    if args.crop < MAX_FITTED_GLYPH:
        parser.error(f"--crop must be at least {MAX_FITTED_GLYPH}, the largest digit")

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    scenes = [*digit_scenes("fit", args.scenes), *varied_scenes("fit", args.varied, VARIED_SEED + 1 + args.seed)]
    validation_scenes = digit_scenes("validation", args.validation_scenes)
    varied_validation = varied_scenes("validation", args.validation_scenes, VARIED_SEED)
    xs, ys, boxes = build_dataset(scenes)
    model = DigitsUNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps)
    loss_fn = nn.CrossEntropyLoss()
    total, ink_right, ink_total = 0.0, 0, 0
    for step in range(1, args.steps + 1):
        model.train()
        x, y = crop_batch(xs, ys, boxes, args.crop, args.batch, rng)
        optimizer.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item()
        ink = y > 0
        ink_right += int((logits.detach().argmax(dim=1)[ink] == y[ink]).sum())
        ink_total += int(ink.sum())
        if step % 100 == 0 or step == args.steps:
            line = (
                f"step {step}: loss {total / 100:.4f}, digit pixels right {ink_right / max(ink_total, 1):.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
            if args.eval_every and step % args.eval_every == 0:
                line += f" validation mIoU {evaluate(model, validation_scenes)[0]:.4f}"
                line += f", varied {evaluate(model, varied_validation)[0]:.4f}"
            print(line, flush=True)
            total, ink_right, ink_total = 0.0, 0, 0
    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu

    val_miou = evaluate(model, validation_scenes)[0]
    varied_miou = evaluate(model, varied_validation)[0]
    # The only look at the test split: after training, for the published figure.
    miou, per_class = evaluate(model, digit_scenes("test", args.test_scenes))
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / DIGITS_WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    report = {
        "model": "digits_segmenter",
        "data": (
            f"{args.scenes} {DIGITS_INPUT_SIZE}x{DIGITS_INPUT_SIZE} digit scenes "
            f"(models.training.scenes, seed {TRAIN_SEED}) of the training split of sklearn.datasets.load_digits, "
            f"less its validation digits, and {args.varied} {VARIED_NOTE} of the same digits"
        ),
        "split": split_record(*(len(split_digits(s)[1]) for s in ("fit", "validation", "test"))),
        "held_out": (
            f"{args.test_scenes} digit scenes (seed {TEST_SEED}) of the held-out split, "
            "never seen in training; pixel confusion summed over the set"
        ),
        "held_out_mean_iou": round(miou, 4),
        "held_out_iou": {label: round(float(v), 4) for label, v in zip(DIGITS_CATEGORIES, per_class, strict=True)},
        "held_out_note": HELD_OUT_NOTE,
        "validation": f"{args.validation_scenes} digit scenes (seed {VALIDATION_SEED}) of the validation digits",
        "validation_mean_iou": round(val_miou, 4),
        "varied_validation_mean_iou": round(varied_miou, 4),
        "monitoring": MONITORING_NOTE,
        "steps": args.steps,
        "batch": args.batch,
        "crop": args.crop,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        # Wall time grows when other work shares the CPU; CPU time (all threads) does not.
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "sha256": sha256_file(weights_path),
    }
    (args.out / "digits_segmenter.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
