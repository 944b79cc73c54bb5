"""Train moving_digits_lstm on moving scikit-learn digits; write models/weights/moving_digits_lstm.{safetensors,json}.

Reproducible (seeded clips, seeded initialisation and order); a few minutes on 2 CPU cores:
    python -m models.training.train_moving_digits_lstm
Training is watched on validation clips (digits carved from the training split); the held-out
accuracy is measured once, after training, as the server sees clips: encoded as MP4 and as GIF,
decoded by models.video_io.decode_clip, preprocessed by the spec.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from models.metrics import classification_report
from models.registry import ModelSpec, get_spec
from models.training.data import HELD_OUT_NOTE, MONITORING_NOTE, split_record
from models.training.moving_digits import (
    CANVAS,
    MAX_GLYPH,
    MAX_SPEED,
    MIN_GLYPH,
    MIN_SPEED,
    TEST_SEED,
    TRAIN_SEED,
    VALIDATION_SEED,
    VARIED_LENGTH,
    VARIED_NOISE,
    VARIED_SEED,
    VARIED_SPEED,
    clip_frames,
    make_clips,
    varied_clips,
)
from models.training.scenes import split_digits
from models.video import CLIP_LENGTH, DIRECTIONS, WEIGHTS_FILE, MovingDigitsLSTM, moving_digits_clip
from models.video_io import VideoLimits, decode_clip, encode_clip
from models.weights import BUNDLED_DIR, sha256_file

HELD_OUT_CLIPS = 480  # 60 per direction
VALIDATION_CLIPS = 480
ENCODE_FPS = 8


Clips = np.ndarray | Sequence[np.ndarray]
"""(N, T, H, W) uint8 clips of one length, or (T, H, W) clips of any lengths."""


def preprocess_batch(clips: Clips) -> torch.Tensor:
    """(T, H, W) uint8 clips of any length -> (N, 16, 1, 48, 48) model inputs, through the serving preprocess."""
    return torch.stack([moving_digits_clip(clip_frames(clip)) for clip in clips])


def classify_encoded(spec: ModelSpec, module: nn.Module, clips: Clips, fmt: Literal["raw", "mp4", "gif"]) -> list[int]:
    """Predicted direction of each clip, encoded as `fmt` and decoded exactly as the server does ("raw": not encoded)."""
    if spec.preprocess_clip is None:
        raise ValueError(f"{spec.name} is not a video model")
    predictions: list[int] = []
    for start in range(0, len(clips), 64):
        inputs = []
        for clip in clips[start : start + 64]:
            frames = clip_frames(clip)
            if fmt != "raw":
                data = encode_clip(frames, fmt, ENCODE_FPS)
                frames = decode_clip(data, VideoLimits(), spec.image_mode, max_output_frames=spec.clip_length)
            inputs.append(spec.preprocess_clip(frames))
        with torch.inference_mode():
            outputs = spec.forward(module.eval(), inputs)
        predictions.extend(int(out.argmax()) for out in outputs)
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=3000)
    parser.add_argument("--varied", type=int, default=3000, help="varied clips (other lengths, speeds, canvases)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    start = time.perf_counter()
    start_cpu = time.process_time()
    train_clips, train_directions, _ = make_clips("fit", args.clips, TRAIN_SEED)
    varied, varied_directions = varied_clips("fit", args.varied, VARIED_SEED + 1 + args.seed)
    val_clips, val_directions, _ = make_clips("validation", VALIDATION_CLIPS, VALIDATION_SEED)
    varied_val, varied_val_directions = varied_clips("validation", VALIDATION_CLIPS, VARIED_SEED)
    xs = torch.cat([preprocess_batch(train_clips), preprocess_batch(varied)])
    ys = torch.cat([torch.as_tensor(train_directions), torch.as_tensor(varied_directions)])
    model = MovingDigitsLSTM()
    spec = get_spec("moving_digits_lstm", weights="random")
    steps_per_epoch = (len(xs) + args.batch - 1) // args.batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=args.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        total = 0.0
        for i in range(0, len(xs), args.batch):
            idx = order[i : i + args.batch]
            optimizer.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        val_accuracy = float(np.mean(np.array(classify_encoded(spec, model, val_clips, "raw")) == val_directions))
        varied_accuracy = float(
            np.mean(np.array(classify_encoded(spec, model, varied_val, "raw")) == varied_val_directions)
        )
        print(
            f"epoch {epoch + 1}: loss {total / len(xs):.4f} validation acc {val_accuracy:.4f}, "
            f"varied {varied_accuracy:.4f}",
            flush=True,
        )
    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu

    # The only look at the test split: after training, for the published figure.
    test_clips, test_directions, _ = make_clips("test", HELD_OUT_CLIPS, TEST_SEED)
    reports = {
        fmt: classification_report(
            test_directions.tolist(), classify_encoded(spec, model, test_clips, fmt), len(DIRECTIONS)
        )
        for fmt in ("mp4", "gif", "raw")
    }
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    report = {
        "model": "moving_digits_lstm",
        "data": (
            f"sklearn.datasets.load_digits digits ({MIN_GLYPH}-{MAX_GLYPH} px) moving across a {CANVAS}x{CANVAS} "
            f"canvas for {CLIP_LENGTH} frames in one of 8 directions at {MIN_SPEED:g}-{MAX_SPEED:g} px/frame, "
            "random start, either polarity, light noise; models/training/moving_digits.py; and "
            f"{args.varied} varied clips (varied_clips): {VARIED_LENGTH[0]}-{VARIED_LENGTH[1]} frames at "
            f"{VARIED_SPEED[0]:g}-{VARIED_SPEED[1]:g} px/frame, canvases of 48 to 128 px, noise up to {VARIED_NOISE:g}"
        ),
        "varied_seeds": {"train": VARIED_SEED + 1 + args.seed, "validation": VARIED_SEED},
        "split": split_record(
            len(split_digits("fit")[1]), len(split_digits("validation")[1]), len(split_digits("test")[1])
        ),
        "clip_seeds": {"train": TRAIN_SEED, "validation": VALIDATION_SEED, "held_out": TEST_SEED},
        "held_out_accuracy": round(reports["mp4"].accuracy, 4),
        "held_out_accuracy_by_format": {fmt: round(r.accuracy, 4) for fmt, r in reports.items()},
        "held_out_encoding": f"MP4 (H.264, libx264) and GIF at {ENCODE_FPS} fps via models.video_io.encode_clip",
        "held_out_size": HELD_OUT_CLIPS,
        "held_out_note": HELD_OUT_NOTE,
        "validation_clips": VALIDATION_CLIPS,
        "validation_accuracy_raw": round(val_accuracy, 4),
        "varied_validation_accuracy_raw": round(varied_accuracy, 4),
        "monitoring": MONITORING_NOTE,
        "held_out_report_mp4": reports["mp4"].as_dict(DIRECTIONS),
        "train_clips": args.clips,
        "varied_train_clips": args.varied,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),  # wall time depends on what else shares the cores
        "sha256": sha256_file(weights_path),
    }
    (args.out / "moving_digits_lstm.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "held_out_report_mp4"}, indent=2))


if __name__ == "__main__":
    main()
