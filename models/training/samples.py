"""Write sample inputs for every bundled model, from held-out data none of them trained on.

    python -m models.training.samples DIR

digit.png (digits_cnn, :explain), scene.png (digits_detector, digits_segmenter, annotate),
noisy.png (digits_denoiser: a digit under Gaussian noise, sigma 0.3), clip.mp4 and clip.gif
(moving_digits_lstm). The truth of each is printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from models.training.data import digits_split, render_digit
from models.training.moving_digits import DIRECTIONS, clip_frames, make_clips
from models.training.scenes import digit_scenes
from models.video_io import encode_clip

NOISE_SIGMA = 0.3


def write_samples(directory: Path) -> dict[str, str]:
    """Write the samples into `directory`; their ground truth by file name."""
    directory.mkdir(parents=True, exist_ok=True)
    _, _, x_test, y_test = digits_split()
    render_digit(x_test[0]).save(directory / "digit.png")
    scene = digit_scenes("test", 1, seed=3)[0]
    scene.image.save(directory / "scene.png")
    clean = np.asarray(render_digit(x_test[1], size=56), dtype=np.float32) / 255.0
    noisy = np.clip(clean + np.random.default_rng(0).normal(0.0, NOISE_SIGMA, clean.shape), 0.0, 1.0)
    Image.fromarray((noisy * 255).round().astype(np.uint8), "L").save(directory / "noisy.png")
    clips, directions, _ = make_clips("test", 1, seed=9)
    for fmt in ("mp4", "gif"):
        (directory / f"clip.{fmt}").write_bytes(encode_clip(clip_frames(clips[0]), fmt))
    boxes = ", ".join(
        f"{int(label)} at {[int(v) for v in box]}" for label, box in zip(scene.labels, scene.boxes, strict=True)
    )
    return {
        "digit.png": f"digit {int(y_test[0])}",
        "scene.png": f"digits {boxes}",
        "noisy.png": f"digit {int(y_test[1])} under Gaussian noise (sigma {NOISE_SIGMA})",
        "clip.mp4": f"a digit moving {DIRECTIONS[int(directions[0])]}",
        "clip.gif": f"a digit moving {DIRECTIONS[int(directions[0])]}",
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the samples and print what each one shows."""
    parser = argparse.ArgumentParser(prog="python -m models.training.samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    for name, truth in write_samples(args.directory).items():
        print(f"{args.directory / name}: {truth}")


if __name__ == "__main__":
    main()
