"""Inference backends side by side: top-1 parity with eager PyTorch, then raw-pipeline throughput.

python -m benchmarks.backends --model resnet18 --size 224x224 --seconds 10 --out benchmarks/results/backends.json

Parity always covers digits_cnn too: its bundled weights are trained, so agreement on its
held-out digits means something. Random-weight torchvision models (seeded, so every backend
gets the same weights) give every photo nearly the same top-1 class; the table shows how many
distinct classes eager predicted and the agreement of the input-dependent part of the logits.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from benchmarks.images import SIZES, jpeg_images
from benchmarks.pipeline import MODELS, Pipeline, weights_for
from benchmarks.raw import measure
from models.backends import BACKENDS, parity

SEED = 0
BATCHES = (1, 16)
TRAINED = "digits_cnn"


def augmented_photos(size: str, count: int, seed: int = SEED) -> list[bytes]:
    """`count` deterministic variants of the benchmark photos: crops, flips, colour jitter; JPEG at `size`."""
    rng = np.random.default_rng(seed)
    # The larger size as the source, so crops keep detail before they are scaled to `size`.
    photos = [Image.open(io.BytesIO(data)).convert("RGB") for data in jpeg_images("640x480")]
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        scale = float(rng.uniform(0.35, 1.0))
        width, height = int(photo.width * scale), int(photo.height * scale)
        left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
        image = photo.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhance(image).enhance(float(rng.uniform(0.7, 1.3)))
        image = ImageOps.fit(image, SIZES[size], Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def held_out_digits(pipeline: Pipeline) -> tuple[list[bytes], list[int]]:
    """digits_cnn's held-out set (digits its training never saw), encoded, with labels."""
    from models.evaluate import bundled_dataset

    data = bundled_dataset(TRAINED, pipeline.spec)
    return data.inputs, data.labels


def _pipeline(model: str, backend: str) -> tuple[Pipeline, float]:
    """The model's pipeline on `backend` and the seconds it took to build; seeded random weights."""
    torch.manual_seed(SEED)
    started = time.perf_counter()
    pipeline = Pipeline(model, backend=backend)
    return pipeline, time.perf_counter() - started


def _top1(pipeline: Pipeline, images: Sequence[bytes], batch: int = 16) -> list[int]:
    """The class each image's answer ranks first, as a server would answer."""
    results = [r for i in range(0, len(images), batch) for r in pipeline(images[i : i + batch])]
    return [int(r["labels"][0]["index"]) for r in results]


def parity_rows(model: str, size: str, count: int, backends: Sequence[str]) -> list[dict[str, Any]]:
    """One row per backend: agreement with eager on the model's fixed image set (and accuracy if labelled)."""
    eager, _ = _pipeline(model, "eager")
    labels: list[int] | None = None
    if model == TRAINED:
        images, labels = held_out_digits(eager)
    else:
        images = augmented_photos(size, count)
    inputs = [eager.prepare(data)[0] for data in images]
    rows = []
    for backend in backends:
        pipeline, setup_s = _pipeline(model, backend)
        row: dict[str, Any] = {
            "model": model,
            "weights": weights_for(model) or "bundled",
            "backend": backend,
            "setup_s": round(setup_s, 3),
            **asdict(parity(eager.module, pipeline.module, pipeline.spec, inputs)),
        }
        if labels is not None:
            row["accuracy"] = float(np.mean(np.array(_top1(pipeline, images)) == np.array(labels)))
        rows.append(row)
    return rows


def throughput_rows(
    model: str, size: str, threads: int, seconds: float, backends: Sequence[str]
) -> list[dict[str, Any]]:
    """The raw pipeline (decode to postprocess) per backend and batch size, at the same threads."""
    rows = []
    for backend in backends:
        for batch in BATCHES:
            rows.append(measure(model, size, batch, threads, seconds, backend=backend))
            print(f"{model} {backend} batch {batch}: {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    return rows


def markdown(parity_table: Sequence[dict[str, Any]], speed: Sequence[dict[str, Any]]) -> str:
    """The parity and throughput tables."""
    lines = [
        "| model | weights | backend | images | top-1 agreement | centered top-1 | max abs logit diff "
        "| eager's distinct top-1 | accuracy | setup s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in parity_table:
        accuracy = f"{100.0 * r['accuracy']:.1f}%" if "accuracy" in r else "-"
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['backend']} | {r['images']} | {100.0 * r['top1_agreement']:.1f}% | "
            f"{100.0 * r['centered_top1_agreement']:.1f}% | {r['max_abs_logit_diff']:.2g} | {r['distinct_top1']} | "
            f"{accuracy} | {r['setup_s']:.2f} |"
        )
    eager = {(r["model"], r["batch"]): r["images_per_s"] for r in speed if r["backend"] == "eager"}
    lines += [
        "",
        "| model | size | backend | batch | threads | images/s | vs eager | CPU-ms/image | batch p50 ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in speed:
        base = eager.get((r["model"], r["batch"]))
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r['model']} | {r['size']} | {r['backend']} | {r['batch']} | {r['threads']} | "
            f"{r['images_per_s']:.1f} | {ratio} | {r['cpu_ms_per_image']:.1f} | {r['batch_p50_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    """The versions of what the backends run on."""
    import onnx
    import onnxruntime
    import onnxscript

    return {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime_providers": ",".join(onnxruntime.get_available_providers()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=MODELS, default=["resnet18"], help="models to time")
    parser.add_argument("--size", choices=sorted(SIZES), default="224x224")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each throughput row")
    parser.add_argument("--images", type=int, default=240, help="augmented photos in the parity set")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    # Eager first: the reference every other row is compared with.
    backends = ["eager", *(b for b in args.backends if b != "eager")]
    torch.set_num_threads(args.threads)
    parity_table = [
        row
        for model in dict.fromkeys([TRAINED, *args.model])
        for row in parity_rows(model, args.size, args.images, backends)
    ]
    speed = [
        row for model in args.model for row in throughput_rows(model, args.size, args.threads, args.seconds, backends)
    ]
    table = markdown(parity_table, speed)
    print(table)
    if args.out:
        # Imported only here: benchmarks.run brings in the servers, and with them Ray.
        from benchmarks.run import machine

        results = {
            "machine": machine(),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "versions": versions(),
            "parity": parity_table,
            "throughput": speed,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
