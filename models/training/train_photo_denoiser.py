"""Train photo_denoiser on scikit-learn's sample photo china.jpg; write models/weights/photo_denoiser.{safetensors,json}.

Reproducible (seeded); a few minutes on 2 CPU cores:
    python -m models.training.train_photo_denoiser

Training sees only patches of the top four fifths of china.jpg (at the scales the served model sees
photos, plus noise of sigma 0.02-0.2) and is watched on the bottom fifth, which no patch touches;
the quality figure is measured once, after training, on the other sample photo, flower.jpg, which
it never saw: PSNR of the restored over the noisy picture at sigma 0.1, at model resolution.
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
from sklearn.datasets import load_sample_image
from torch import nn

from models import denoisers
from models.weights import BUNDLED_DIR, sha256_file

EVAL_SIGMA = 0.1
EVAL_NOISE_SEED = 1234
PATCH = 48
VALIDATION_ROWS = 0.2  # the bottom fifth of china.jpg, at every scale, is kept for validation


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def china_scales() -> list[torch.Tensor]:
    """china.jpg as the served model sees photos (resized whole to 256x256), at 384 wide and at full size."""
    photo = Image.fromarray(load_sample_image("china.jpg"))
    medium = photo.resize((384, round(384 * photo.height / photo.width)), Image.Resampling.BILINEAR)
    return [denoisers.resize_preprocess(denoisers.PHOTO_SIZE, "RGB")(photo), _tensor(medium), _tensor(photo)]


def _cut(picture: torch.Tensor) -> int:
    return round(picture.shape[1] * (1.0 - VALIDATION_ROWS))


def training_pictures() -> list[torch.Tensor]:
    """The top four fifths of china.jpg at each scale: all that training patches are cut from."""
    return [pic[:, : _cut(pic)] for pic in china_scales()]


def validation_pictures() -> list[torch.Tensor]:
    """The bottom fifth of china.jpg at the served and the 384-wide scale, never in a training patch."""
    return [pic[:, _cut(pic) :] for pic in china_scales()[:2]]


def patches(pictures: list[torch.Tensor], n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` random PATCHxPATCH crops, randomly flipped and rotated by multiples of 90 degrees."""
    out = []
    for _ in range(n):
        pic = pictures[int(torch.randint(len(pictures), (1,), generator=generator))]
        y = int(torch.randint(pic.shape[1] - PATCH + 1, (1,), generator=generator))
        x = int(torch.randint(pic.shape[2] - PATCH + 1, (1,), generator=generator))
        patch = pic[:, y : y + PATCH, x : x + PATCH]
        patch = torch.rot90(patch, int(torch.randint(4, (1,), generator=generator)), dims=(1, 2))
        out.append(patch.flip(2) if bool(torch.randint(2, (1,), generator=generator)) else patch)
    return torch.stack(out)


def held_out_picture() -> torch.Tensor:
    """flower.jpg, never seen in training, as the served model sees it."""
    return denoisers.resize_preprocess(denoisers.PHOTO_SIZE, "RGB")(Image.fromarray(load_sample_image("flower.jpg")))


def evaluate(model: nn.Module, clean: torch.Tensor, sigma: float = EVAL_SIGMA) -> dict[str, float]:
    """PSNR (dB) of the noisy and the restored picture against the clean one."""
    noisy = denoisers.add_noise(clean[None], sigma, torch.Generator().manual_seed(EVAL_NOISE_SEED))
    with torch.inference_mode():
        restored = model.eval()(noisy)
    noisy_db = float(denoisers.psnr(noisy, clean[None])[0])
    restored_db = float(denoisers.psnr(restored, clean[None])[0])
    return {"noisy_psnr_db": noisy_db, "restored_psnr_db": restored_db, "psnr_gain_db": restored_db - noisy_db}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is faster on a busy machine)")
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    pictures = training_pictures()
    validation = validation_pictures()
    model = denoisers.ResidualDenoiser()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        model.train()
        clean = patches(pictures, args.batch_size, generator)
        # Blind to the noise level: each patch gets its own sigma.
        sigma = 0.02 + 0.18 * torch.rand(args.batch_size, 1, 1, 1, generator=generator)
        noisy = (clean + sigma * torch.randn(clean.shape, generator=generator)).clamp(0.0, 1.0)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(noisy), clean)
        torch.autograd.backward(loss)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps:
            val_gain = float(np.mean([evaluate(model, pic)["psnr_gain_db"] for pic in validation]))
            print(
                f"step {step}: mse {loss.item():.5f} validation PSNR gain {val_gain:.2f} dB "
                f"({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    # The only look at flower.jpg: after training, for the published figure.
    held_out = held_out_picture()
    scores = evaluate(model, held_out)
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / denoisers.PHOTO_WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    report = {
        "model": "photo_denoiser",
        "data": (
            "patches of the top four fifths of sklearn.datasets.load_sample_image('china.jpg') at 3 scales, "
            "Gaussian noise sigma 0.02-0.2"
        ),
        "validation": {
            "image": (
                "the bottom fifth of china.jpg (no training patch overlaps it) at 256x256 and 384 wide; "
                "mean PSNR gain at the held-out noise sigma and seed"
            ),
            "psnr_gain_db": round(val_gain, 3),
        },
        "monitoring": "watched on the validation strip only; flower.jpg evaluated once, after training",
        "held_out_note": (
            "scikit-learn ships two sample photos: one trains and validates, the other is the whole test set, "
            "so the figure is one picture's PSNR gain at one noise draw, not an average over photos"
        ),
        "held_out": {
            "image": "sklearn.datasets.load_sample_image('flower.jpg') resized to 256x256",
            "noise_sigma": EVAL_SIGMA,
            "noise_seed": EVAL_NOISE_SEED,
            **{k: round(v, 3) for k, v in scores.items()},
        },
        "psnr_gain_db": round(scores["psnr_gain_db"], 3),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "patch": PATCH,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "sha256": sha256_file(weights_path),
    }
    (args.out / "photo_denoiser.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
