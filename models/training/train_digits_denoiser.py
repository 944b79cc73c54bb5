"""Train digits_denoiser on scikit-learn's digits and write models/weights/digits_denoiser.{safetensors,json}.

Reproducible (seeded, single-threaded data generation); a few minutes on 2 CPU cores:
    python -m models.training.train_digits_denoiser

The input is a clean 28x28 digit picture plus Gaussian noise (sigma 0.3 of full range, clipped),
the target the clean picture. Pictures come in both polarities and several framings (MNIST-style
centred, whole tilted pictures, whole-frame renderings), because the served model resizes
whatever picture it is given, without cropping. Training is watched on a validation split carved
from the training digits; the test split is evaluated once, after training, for the published figure.
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

from models import denoisers
from models.digits import normalize_digit
from models.registry import Preprocess
from models.training.data import (
    HELD_OUT_NOTE,
    MONITORING_NOTE,
    augment_digit,
    digits_validation_split,
    render_digit,
    split_record,
)
from models.weights import BUNDLED_DIR, sha256_file

EVAL_NOISE_SEED = 1234
_METHODS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _variant(image8: np.ndarray, rng: np.random.Generator, preprocess: Preprocess) -> torch.Tensor:
    """One clean 28x28 training picture of a digit, in one of three framings and either polarity."""
    kind = int(rng.integers(3))
    if kind == 0:  # centred in a 20x20 box, as digits_cnn and MNIST see digits
        x: torch.Tensor = normalize_digit(augment_digit(image8, rng))
        return 1.0 - x if rng.random() < 0.5 else x
    if kind == 1:  # the whole tilted, padded picture (augment_digit picks the polarity)
        return preprocess(augment_digit(image8, rng))
    size = int(rng.integers(16, 72))
    pil = Image.fromarray((np.clip(image8, 0, 1) * 255).astype(np.uint8), "L")
    pil = pil.resize((size, size), _METHODS[int(rng.integers(3))])
    if rng.random() < 0.5:
        pil = Image.eval(pil, lambda v: 255 - v)
    return preprocess(pil)


def build_dataset(images: np.ndarray, copies: int, seed: int) -> torch.Tensor:
    """`copies` clean renderings of every training digit, (N, 1, 28, 28) in [0, 1]."""
    rng = np.random.default_rng(seed)
    preprocess = denoisers.resize_preprocess(denoisers.DIGITS_SIZE, "L")
    return torch.stack([_variant(img, rng, preprocess) for _ in range(copies) for img in images])


def held_out_set(images: np.ndarray) -> torch.Tensor:
    """Digits not trained on, as the server sees them: 64x64 pictures in both polarities, resized whole to 28x28."""
    preprocess = denoisers.resize_preprocess(denoisers.DIGITS_SIZE, "L")
    return torch.stack([preprocess(render_digit(img, ink_on_paper=ink)) for ink in (True, False) for img in images])


def evaluate(model: nn.Module, clean: torch.Tensor, sigma: float = denoisers.NOISE_SIGMA) -> dict[str, float]:
    """Mean PSNR (dB) of the noisy and the restored images against the clean ones, at model resolution."""
    noisy = denoisers.add_noise(clean, sigma, torch.Generator().manual_seed(EVAL_NOISE_SEED))
    with torch.inference_mode():
        restored, _ = model.eval()(noisy)
    noisy_db = float(denoisers.psnr(noisy, clean).mean())
    restored_db = float(denoisers.psnr(restored, clean).mean())
    return {"noisy_psnr_db": noisy_db, "restored_psnr_db": restored_db, "psnr_gain_db": restored_db - noisy_db}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is faster on a busy machine)")
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x_train, _, x_val, _, x_test, _ = digits_validation_split()
    start, cpu_start = time.perf_counter(), time.process_time()
    clean = build_dataset(x_train, args.copies, args.seed)
    validation = held_out_set(x_val)
    model = denoisers.DenoisingAutoencoder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    b = args.batch_size
    steps_per_epoch = (len(clean) + b - 1) // b
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(clean), generator=generator)
        total = 0.0
        for i in range(0, len(clean), b):
            target = clean[order[i : i + b]]
            # Fresh noise every epoch: the model sees each digit under many different noises.
            noisy = denoisers.add_noise(target, denoisers.NOISE_SIGMA, generator)
            optimizer.zero_grad()
            restored, _ = model(noisy)
            loss = nn.functional.mse_loss(restored, target)
            torch.autograd.backward(loss)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(target)
        val_scores = evaluate(model, validation)
        print(
            f"epoch {epoch + 1}: mse {total / len(clean):.5f} validation PSNR gain {val_scores['psnr_gain_db']:.2f} dB "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )

    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    # The only look at the test split: after training, for the published figure.
    held_out = held_out_set(x_test)
    scores = evaluate(model, held_out)
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / denoisers.DIGITS_WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    report = {
        "model": "digits_denoiser",
        "data": (
            "sklearn.datasets.load_digits training split at 28x28 (centred, tilted and whole-frame "
            "renderings, both polarities) plus Gaussian noise"
        ),
        "split": split_record(len(x_train), len(x_val), len(x_test)),
        "noise_sigma": denoisers.NOISE_SIGMA,
        "held_out": {
            "images": len(held_out),
            "what": "held-out digits as 64x64 pictures, both polarities, resized to 28x28, noise seed "
            f"{EVAL_NOISE_SEED}; mean per-image PSNR in [0, 1] range",
            **{k: round(v, 3) for k, v in scores.items()},
        },
        "psnr_gain_db": round(scores["psnr_gain_db"], 3),
        "held_out_note": HELD_OUT_NOTE,
        "validation": {"images": len(validation), **{k: round(v, 3) for k, v in val_scores.items()}},
        "monitoring": MONITORING_NOTE,
        "latent_dim": denoisers.DIGITS_LATENT,
        "epochs": args.epochs,
        "augmented_copies": args.copies,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "sha256": sha256_file(weights_path),
    }
    (args.out / "digits_denoiser.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
