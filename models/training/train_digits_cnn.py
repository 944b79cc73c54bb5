"""Train digits_cnn on scikit-learn's digits and write models/weights/digits_cnn.{safetensors,json}.

Reproducible (seeded, single-threaded data generation); a few minutes on 2 CPU cores:
    python -m models.training.train_digits_cnn

Training is watched on a validation split carved from the training digits; the test split is
evaluated once, after training, for the published figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from models.digits import WEIGHTS_FILE, DigitsCNN, normalize_digit
from models.training.data import (
    HELD_OUT_NOTE,
    MONITORING_NOTE,
    augment_digit,
    digits_validation_split,
    render_digit,
    split_record,
)
from models.weights import BUNDLED_DIR, sha256_file


def build_dataset(images: np.ndarray, labels: np.ndarray, copies: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`copies` augmented renderings of every image, normalised as the server does."""
    rng = np.random.default_rng(seed)
    xs = [normalize_digit(augment_digit(img, rng)) for _ in range(copies) for img in images]
    ys = np.tile(labels, copies)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy on digits rendered as 64x64 dark-on-light pictures."""
    x = torch.stack([normalize_digit(render_digit(img)) for img in images])
    with torch.inference_mode():
        pred = model.eval()(x).argmax(dim=1).numpy()
    return float((pred == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--copies", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    x_train, y_train, x_val, y_val, x_test, y_test = digits_validation_split()
    start, cpu_start = time.perf_counter(), time.process_time()
    xs, ys = build_dataset(x_train, y_train, args.copies, args.seed)
    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = (len(xs) + 127) // 128
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=args.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        total = 0.0
        for i in range(0, len(xs), 128):
            idx = order[i : i + 128]
            optimizer.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        val_accuracy = evaluate(model, x_val, y_val)
        print(f"epoch {epoch + 1}: loss {total / len(xs):.4f} validation acc {val_accuracy:.4f}", flush=True)
    train_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    # The only look at the test split: after training, for the published figure.
    accuracy = evaluate(model, x_test, y_test)
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    report = {
        "model": "digits_cnn",
        "data": "sklearn.datasets.load_digits (1797 8x8 images)",
        "split": split_record(len(y_train), len(y_val), len(y_test)),
        "held_out_accuracy": round(accuracy, 4),
        "held_out_size": len(y_test),
        "held_out_note": HELD_OUT_NOTE,
        "validation_accuracy": round(val_accuracy, 4),
        "monitoring": MONITORING_NOTE,
        "epochs": args.epochs,
        "augmented_copies": args.copies,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),  # wall time depends on what else shares the cores
        "sha256": sha256_file(weights_path),
    }
    (args.out / "digits_cnn.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
