"""Shifted evaluation suites: every bundled model on held-out data drawn unlike its training data.

    python -m models.evaluate --shifted                    # every bundled model; writes models/shifted.json
    python -m models.evaluate --shifted digits_detector    # one model (its entry in the file is replaced)

Each suite is generated here, offline and seeded, from the held-out split of scikit-learn's
digits (the photo suite from the held-out photo): canvases of 64 to 512 px, digits of 12 to 96
px, both polarities, blur, Gaussian and JPEG noise, low contrast, rotation up to 20 degrees,
clutter (strokes beside the digits), and for clips other speeds, lengths and canvases. Every
input goes through the served path (encoded bytes, decode, preprocess, batched forward,
postprocess), as `models.evaluate` scores the in-distribution sets. The figures land in
models/shifted.json, from which docs/models.md's shifted tables are generated (models/docs.py);
the test tier re-measures a reduced suite (`reduced=True`: fewer pictures from the same seeded streams).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.ops import box_iou

from contract.params import DetectionParams
from contract.tasks import Task
from models import metrics
from models.docs import SHIFTED
from models.heldout import Dataset
from models.registry import ModelSpec, get_spec

RESULTS = SHIFTED  # models/shifted.json
SEED = 16
COMMAND = "python -m models.evaluate --shifted"
# The floor of each model's metrics on every shift; a shift measured below its floor is one the
# model does not cover, and its card says so with the figure.
FLOORS: dict[str, dict[str, float]] = {
    "digits_cnn": {"accuracy": 0.95},
    "digits_detector": {"recall": 0.9, "map_50": 0.85},
    "digits_segmenter": {"mean_iou": 0.75},
    "digits_denoiser": {"psnr_gain_db": 4.0},
    "photo_denoiser": {"psnr_gain_db": 4.0},
    "digits_dcgan": {"recognition_rate": 0.95},
    "moving_digits_lstm": {"accuracy": 0.9},
}
# What a user gets unasked: the API's default score threshold.
DEFAULT_SCORE_THRESHOLD: float = DetectionParams.model_fields["score_threshold"].default
DENOISE_SIGMA = 0.3  # models.denoisers.NOISE_SIGMA: the noise digits_denoiser is for


@dataclass(frozen=True)
class Shift:
    """How a set's pictures are drawn: layout (canvas, digit size, count) and rendering."""

    name: str
    what: str
    canvas: int = 128
    glyph: tuple[int, int] = (20, 44)
    max_digits: int = 4
    num_digits: int | None = None
    invert: bool = False
    paper: tuple[float, float] = (0.75, 1.0)
    contrast: tuple[float, float] = (0.55, 0.75)
    noise: tuple[float, float] = (0.0, 0.04)  # sigma of Gaussian noise, fraction of full range
    blur: float = 0.0  # Gaussian blur radius in px
    jpeg: int = 0  # JPEG quality; 0: PNG
    rotation: float = 0.0  # degrees, each digit
    clutter: int = 0  # strokes beside the digits


SCENE_SHIFTS: tuple[Shift, ...] = (
    Shift("reference", "128 px, digits 20-44 px, dark on light (as the held-out scenes)"),
    Shift("canvas_64", "64 px canvas, 1-2 digits of 14-28 px", canvas=64, glyph=(14, 28), max_digits=2),
    Shift("canvas_256", "256 px canvas, digits 40-88 px", canvas=256, glyph=(40, 88)),
    Shift("canvas_512", "512 px canvas, digits 48-96 px", canvas=512, glyph=(48, 96)),
    Shift("digits_12_20", "128 px canvas, digits 12-20 px", glyph=(12, 20)),
    Shift("digits_64_96", "192 px canvas, 1-3 digits of 64-96 px", canvas=192, glyph=(64, 96), max_digits=3),
    Shift(
        "clean_192",
        "192 px, three 40 px digits, black on white, no noise",
        canvas=192,
        glyph=(40, 40),
        num_digits=3,
        paper=(1.0, 1.0),
        contrast=(1.0, 1.0),
        noise=(0.0, 0.0),
    ),
    Shift(
        "clean_192_inverted",
        "192 px, three 40 px digits, white on black, no noise",
        canvas=192,
        glyph=(40, 40),
        num_digits=3,
        invert=True,
        paper=(1.0, 1.0),
        contrast=(1.0, 1.0),
        noise=(0.0, 0.0),
    ),
    Shift("inverted", "light digits on dark paper", invert=True),
    Shift("blur", "Gaussian blur, radius 1.5 px", blur=1.5),
    Shift("gaussian_noise", "Gaussian noise, sigma 0.15", noise=(0.15, 0.15)),
    Shift("jpeg", "JPEG quality 15", jpeg=15),
    Shift("low_contrast", "ink 12-20% darker than the paper", contrast=(0.12, 0.2)),
    Shift("rotation", "each digit turned by up to 20 degrees", rotation=20.0),
    Shift("clutter", "4 strokes (lines, boxes, triangles) beside the digits", clutter=4),
)

DIGIT_SHIFTS: tuple[Shift, ...] = (
    Shift("reference", "64 px picture filled by the digit, dark on light", canvas=64, glyph=(56, 64), num_digits=1),
    Shift("canvas_28", "28 px picture, digit 18-26 px", canvas=28, glyph=(18, 26), num_digits=1),
    Shift("canvas_256", "256 px picture, digit 40-96 px anywhere", canvas=256, glyph=(40, 96), num_digits=1),
    Shift("canvas_512", "512 px picture, digit 48-96 px anywhere", canvas=512, glyph=(48, 96), num_digits=1),
    Shift("digits_12_16", "64 px picture, digit 12-16 px", canvas=64, glyph=(12, 16), num_digits=1),
    Shift("inverted", "light digit on dark paper", canvas=64, glyph=(40, 60), invert=True, num_digits=1),
    Shift("blur", "Gaussian blur, radius 1.5 px", canvas=64, glyph=(40, 60), blur=1.5, num_digits=1),
    Shift("gaussian_noise", "Gaussian noise, sigma 0.15", canvas=64, glyph=(40, 60), noise=(0.15, 0.15), num_digits=1),
    Shift("jpeg", "JPEG quality 15", canvas=64, glyph=(40, 60), jpeg=15, num_digits=1),
    Shift(
        "low_contrast",
        "ink 12-20% darker than the paper",
        canvas=64,
        glyph=(40, 60),
        contrast=(0.12, 0.2),
        num_digits=1,
    ),
    Shift("rotation", "digit turned by up to 20 degrees", canvas=64, glyph=(40, 60), rotation=20.0, num_digits=1),
    Shift("clutter", "96 px picture, 2 strokes beside the digit", canvas=96, glyph=(40, 56), clutter=2, num_digits=1),
)


# ---- drawing ----------------------------------------------------------------------------


def _render(ink: Any, shift: Shift, rng: np.random.Generator, *, noisy: bool = True) -> np.ndarray:
    """A layout drawn as `shift` says (levels drawn from its ranges), before any JPEG coding."""
    from models.training.scenes import Look, render_layout

    paper, contrast, sigma = (float(rng.uniform(*r)) for r in (shift.paper, shift.contrast, shift.noise))
    look = Look(paper, contrast, sigma if noisy else 0.0, shift.blur, shift.invert)
    return render_layout(ink, look, rng)


def _encode(pixels: np.ndarray, jpeg: int) -> bytes:
    from models.training.scenes import encode_picture

    return encode_picture(pixels, jpeg)


def _layouts(shift: Shift, count: int, rng: np.random.Generator) -> list[Any]:
    from models.training.scenes import layout_scene, split_digits

    images, labels = split_digits("test")
    return [
        layout_scene(
            images,
            labels,
            rng,
            size=shift.canvas,
            num_digits=shift.num_digits,
            max_digits=shift.max_digits,
            glyph=shift.glyph,
            rotation=shift.rotation,
            clutter=shift.clutter,
        )
        for _ in range(count)
    ]


def _rng(shift: Shift, salt: str) -> np.random.Generator:
    """One seeded stream per (suite, shift): a run of any size draws the same kind of pictures."""
    return np.random.default_rng([SEED, *(ord(c) for c in f"{salt}/{shift.name}")])


def scene_set(task: Task, shift: Shift, count: int) -> Dataset:
    """`count` scenes of held-out digits drawn as `shift` says, with boxes and masks."""
    rng = _rng(shift, "scenes")
    data = Dataset(task)
    for n, layout in enumerate(_layouts(shift, count, rng)):
        data.inputs.append(_encode(_render(layout, shift, rng), shift.jpeg))
        data.boxes.append(metrics.Detections(layout.boxes, layout.labels))
        data.masks.append(layout.mask)
        data.names.append(f"{shift.name}_{n}")
    return data


def digit_set(shift: Shift, count: int) -> Dataset:
    """`count` pictures of one held-out digit each, drawn as `shift` says, with the digit's label."""
    rng = _rng(shift, "digits")
    data = Dataset(Task.CLASSIFICATION)
    for n, layout in enumerate(_layouts(shift, count, rng)):
        data.inputs.append(_encode(_render(layout, shift, rng), shift.jpeg))
        data.labels.append(int(layout.labels[0]))
        data.names.append(f"{shift.name}_{n}")
    return data


# ---- measuring --------------------------------------------------------------------------


def _predictions(spec: ModelSpec, inputs: Sequence[bytes], params: dict[str, Any]) -> list[dict[str, Any]]:
    from models.evaluate import BATCH, local_predictor

    predict = local_predictor(spec, params)
    found: list[dict[str, Any]] = []
    for start in range(0, len(inputs), BATCH):
        found.extend(predict(list(inputs[start : start + BATCH])))
    return found


def detection_recall(predictions: Sequence[dict[str, Any]], truths: Sequence[metrics.Detections]) -> float:
    """Share of true digits found, right label and IoU >= 0.5, among detections at the default threshold."""
    found = total = 0
    for prediction, truth in zip(predictions, truths, strict=True):
        kept = [d for d in prediction["detections"] if d["score"] >= DEFAULT_SCORE_THRESHOLD]
        total += len(truth.labels)
        if not kept or not len(truth.labels):
            continue
        boxes = torch.tensor([d["box"] for d in kept], dtype=torch.float32)
        ious = box_iou(boxes, torch.as_tensor(truth.boxes, dtype=torch.float32)).numpy()
        used = np.zeros(len(kept), dtype=bool)
        for column, label in enumerate(truth.labels):
            for row in np.argsort(-ious[:, column]):
                if ious[row, column] < 0.5:
                    break
                if not used[row] and int(kept[row]["index"]) == int(label):
                    used[row] = True
                    found += 1
                    break
    return found / max(total, 1)


def _scene_rows(spec: ModelSpec, count: int) -> list[dict[str, Any]]:
    from models.evaluate import score

    rows = []
    for shift in SCENE_SHIFTS:
        data = scene_set(spec.task, shift, count)
        if spec.task == Task.DETECTION:
            predictions = _predictions(spec, data.inputs, {"score_threshold": 0.05})
            figures = {
                "recall": detection_recall(predictions, data.boxes),
                "map_50": score(data, predictions, spec)["map_50"],
            }
        else:
            predictions = _predictions(spec, data.inputs, {})
            figures = {"mean_iou": score(data, predictions, spec)["mean_iou"]}
        rows.append(_row(shift, len(data.inputs), figures))
    return rows


def _classifier_rows(spec: ModelSpec, count: int) -> list[dict[str, Any]]:
    rows = []
    for shift in DIGIT_SHIFTS:
        data = digit_set(shift, count)
        predictions = _predictions(spec, data.inputs, {"top_k": 1})
        right = sum(int(p["labels"][0]["index"]) == label for p, label in zip(predictions, data.labels, strict=True))
        rows.append(_row(shift, len(data.inputs), {"accuracy": right / len(data.labels)}))
    return rows


def _psnr(restored: np.ndarray, clean: np.ndarray) -> float:
    mse = float(np.mean((restored.astype(np.float64) - clean.astype(np.float64)) ** 2))
    return 10.0 * float(np.log10(1.0 / max(mse, 1e-10)))


def _decoded(prediction: dict[str, Any]) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(prediction["image"])))
    return np.asarray(image, dtype=np.float32) / 255.0


def _denoising_row(
    spec: ModelSpec, shift: Shift, pairs: Sequence[tuple[np.ndarray, bytes, np.ndarray]]
) -> dict[str, Any]:
    """Mean PSNR gain (restored against noisy, both against the clean picture) over `pairs`."""
    predictions = _predictions(spec, [encoded for _, encoded, _ in pairs], {})
    gains = [
        _psnr(_decoded(p), clean) - _psnr(noisy, clean) for (clean, _, noisy), p in zip(pairs, predictions, strict=True)
    ]
    return _row(shift, len(pairs), {"psnr_gain_db": float(np.mean(gains))})


DENOISER_SHIFTS: tuple[Shift, ...] = (
    *(s for s in DIGIT_SHIFTS if s.name != "gaussian_noise"),
    replace(DIGIT_SHIFTS[0], name="noise_0.15", what="64 px digit picture, noise sigma 0.15", noise=(0.15, 0.15)),
    replace(DIGIT_SHIFTS[0], name="noise_0.5", what="64 px digit picture, noise sigma 0.5", noise=(0.5, 0.5)),
)


def _digit_denoiser_rows(spec: ModelSpec, count: int) -> list[dict[str, Any]]:
    """Clean digit pictures drawn as each shift says, plus noise of sigma 0.3 (or the shift's own), JPEG last."""
    rows = []
    for shift in DENOISER_SHIFTS:
        rng = _rng(shift, "denoise")
        sigma = shift.noise[0] if shift.name.startswith("noise_") else DENOISE_SIGMA
        pairs = []
        for layout in _layouts(shift, count, rng):
            clean = _render(layout, shift, rng, noisy=False)
            noisy = np.clip(clean + rng.normal(0.0, sigma, clean.shape), 0.0, 1.0)
            encoded = _encode(noisy, shift.jpeg)
            seen = np.asarray(Image.open(io.BytesIO(encoded)), dtype=np.float32) / 255.0
            pairs.append((clean, encoded, seen))
        rows.append(_denoising_row(spec, shift, pairs))
    return rows


PHOTO_SHIFTS: tuple[tuple[str, str, int, float, dict[str, Any]], ...] = (
    ("reference", "256x256, noise sigma 0.1 (as the held-out figure)", 256, 0.1, {}),
    ("canvas_64", "64x64, noise sigma 0.1", 64, 0.1, {}),
    ("canvas_128", "128x128, noise sigma 0.1", 128, 0.1, {}),
    ("canvas_512", "512x512, noise sigma 0.1", 512, 0.1, {}),
    ("noise_0.05", "256x256, noise sigma 0.05", 256, 0.05, {}),
    ("noise_0.2", "256x256, noise sigma 0.2", 256, 0.2, {}),
    ("jpeg", "256x256, noise sigma 0.1, then JPEG quality 30", 256, 0.1, {"jpeg": 30}),
    ("low_contrast", "256x256, contrast halved, noise sigma 0.1", 256, 0.1, {"contrast": 0.5}),
    ("greyscale", "256x256 grey photo as RGB, noise sigma 0.1", 256, 0.1, {"grey": True}),
    ("blur", "256x256 photo blurred (radius 1.5), noise sigma 0.1", 256, 0.1, {"blur": 1.5}),
)


def _photo_denoiser_rows(spec: ModelSpec, count: int) -> list[dict[str, Any]]:
    """The held-out photo (flower.jpg) at other sizes, noise levels and renderings; `count` noise draws each."""
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("flower.jpg"))
    rows = []
    for name, what, side, sigma, extra in PHOTO_SHIFTS:
        shift = Shift(name, what, canvas=side)
        rng = _rng(shift, "photo")
        picture = photo.resize((side, side), Image.Resampling.BICUBIC)
        if extra.get("grey"):
            picture = picture.convert("L").convert("RGB")
        if extra.get("blur"):
            picture = picture.filter(ImageFilter.GaussianBlur(extra["blur"]))
        clean = np.asarray(picture, dtype=np.float32) / 255.0
        if "contrast" in extra:
            clean = clean.mean() + extra["contrast"] * (clean - clean.mean())
        pairs = []
        for _ in range(count):
            noisy = np.clip(clean + rng.normal(0.0, sigma, clean.shape), 0.0, 1.0)
            image = Image.fromarray((noisy * 255).round().astype(np.uint8), "RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=extra["jpeg"]) if "jpeg" in extra else image.save(
                buffer, format="PNG"
            )
            encoded = buffer.getvalue()
            pairs.append((clean, encoded, np.asarray(Image.open(io.BytesIO(encoded)), dtype=np.float32) / 255.0))
        rows.append(_denoising_row(spec, shift, pairs))
    return rows


GAN_SHIFTS: tuple[tuple[str, str, int], ...] = (
    ("reference", "digit d drawn with seed d (as the training report's check)", 0),
    ("seeds_1000", "digit d drawn with seed 1000 + d", 1000),
    ("seeds_2000000", "digit d drawn with seed 2000000 + d", 2_000_000),
)


def _gan_rows(spec: ModelSpec, count: int) -> list[dict[str, Any]]:
    """Share of generated digits the bundled digits_cnn reads as the digit asked for, per seed range."""
    from models.registry import Item

    assert spec.sample is not None
    module = spec.build()
    reader = get_spec("digits_cnn")
    per_digit = max(1, count // 10)
    rows = []
    for name, what, base in GAN_SHIFTS:
        encoded: list[bytes] = []
        wanted: list[int] = []
        for digit in range(10):
            inputs = spec.sample(per_digit, base + digit, {"label": digit})
            with torch.inference_mode():
                outputs = spec.forward(module, inputs)
            answers = spec.postprocess(outputs, [Item(None) for _ in outputs])
            encoded.extend(base64.b64decode(a.model_dump()["image"]) for a in answers)
            wanted.extend([digit] * len(answers))
        predictions = _predictions(reader, encoded, {"top_k": 1})
        right = sum(int(p["labels"][0]["index"]) == d for p, d in zip(predictions, wanted, strict=True))
        rows.append(_row(Shift(name, what), len(wanted), {"recognition_rate": right / len(wanted)}))
    return rows


@dataclass(frozen=True)
class ClipShift:
    """How a set of moving-digit clips is drawn (models.training.moving_digits.make_clip's knobs)."""

    name: str
    what: str
    canvas: int = 48
    length: int = 16
    glyph: tuple[int, int] = (16, 24)
    speed: tuple[float, float] = (1.0, 3.0)
    noise: tuple[float, float] = (0.0, 0.05)


CLIP_SHIFTS: tuple[ClipShift, ...] = (
    ClipShift("reference", "48 px, 16 frames, 1-3 px per frame (as the held-out clips)"),
    ClipShift("frames_8", "8 frames", length=8),
    ClipShift("frames_32", "32 frames at 0.5-1.4 px per frame", length=32, speed=(0.5, 1.4)),
    ClipShift("slow", "0.3-1 px per frame", speed=(0.3, 1.0)),
    ClipShift("fast", "10 frames at 3-4.5 px per frame", length=10, speed=(3.0, 4.5)),
    ClipShift("canvas_96", "96 px, digits 32-48 px, 2-6 px per frame", canvas=96, glyph=(32, 48), speed=(2.0, 6.0)),
    ClipShift("canvas_128", "128 px, digits 16-24 px, 2-6 px per frame", canvas=128, speed=(2.0, 6.0)),
    ClipShift("noise", "Gaussian noise, sigma 0.1-0.15", noise=(0.1, 0.15)),
)


def _clip_rows(spec: ModelSpec, count: int) -> list[dict[str, Any]]:
    from models.training.moving_digits import DIRECTIONS, clip_frames, make_clip
    from models.training.scenes import split_digits
    from models.video_io import encode_clip

    images, _ = split_digits("test")
    rows = []
    for shift in CLIP_SHIFTS:
        rng = _rng(Shift(shift.name, shift.what), "clips")
        directions = [n % len(DIRECTIONS) for n in range(count)]
        inputs = []
        for direction in directions:
            clip = make_clip(
                images[int(rng.integers(len(images)))],
                direction,
                rng,
                canvas=shift.canvas,
                length=shift.length,
                glyph=shift.glyph,
                speed=shift.speed,
                noise=shift.noise,
            )
            inputs.append(encode_clip(clip_frames(clip), "gif"))
        predictions = _predictions(spec, inputs, {"top_k": 1})
        right = sum(int(p["labels"][0]["index"]) == d for p, d in zip(predictions, directions, strict=True))
        rows.append(_row(Shift(shift.name, shift.what), count, {"accuracy": right / count}))
    return rows


def _row(shift: Shift, samples: int, figures: dict[str, float]) -> dict[str, Any]:
    return {"shift": shift.name, "what": shift.what, "samples": samples, **{k: round(v, 4) for k, v in figures.items()}}


# Per model: how its suite is measured, and how many items per shift in full and reduced runs.
SUITES: dict[str, tuple[Callable[[ModelSpec, int], list[dict[str, Any]]], int, int]] = {
    "digits_cnn": (_classifier_rows, 300, 60),
    "digits_detector": (_scene_rows, 200, 40),
    "digits_segmenter": (_scene_rows, 200, 40),
    "digits_denoiser": (_digit_denoiser_rows, 200, 40),
    "photo_denoiser": (_photo_denoiser_rows, 4, 1),
    "digits_dcgan": (_gan_rows, 500, 100),
    "moving_digits_lstm": (_clip_rows, 160, 40),
}


def measure(model: str, *, reduced: bool = False) -> dict[str, Any]:
    """One bundled model's table: its metrics on every shift of its suite."""
    rows_of, full, small = SUITES[model]
    spec = get_spec(model)
    torch.manual_seed(SEED)
    started = time.perf_counter()
    rows = rows_of(spec, small if reduced else full)
    return {
        "weights_sha256": spec.weights.sha256,
        "floors": FLOORS[model],
        "shifts": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


def below_floor(model: str, row: dict[str, Any]) -> list[str]:
    """The metrics of `row` under `model`'s floor."""
    return [metric for metric, floor in FLOORS[model].items() if row[metric] < floor]


def load(path: Path = RESULTS) -> dict[str, Any]:
    results: dict[str, Any] = json.loads(path.read_text())
    return results


def run(models: Sequence[str], path: Path = RESULTS, *, baseline: str | None = None) -> dict[str, Any]:
    """Measure `models` in full and write them into the results file (other models' entries are kept).

    With `baseline` (what was measured, say a commit), the figures are recorded as the baseline
    instead: what the models answered before a change, which later figures must not fall below
    on the shifts a model does not cover.
    """
    results = load(path) if path.exists() else {}
    results["command"] = COMMAND
    results["seed"] = SEED
    results["suites"] = {
        "scenes": [asdict(s) for s in SCENE_SHIFTS],
        "digits": [asdict(s) for s in DIGIT_SHIFTS],
        "clips": [asdict(s) for s in CLIP_SHIFTS],
    }
    if baseline is not None:
        results["baseline"] = {"measured": baseline, "models": results.get("baseline", {}).get("models", {})}
        entries = results["baseline"]["models"]
    else:
        entries = results.setdefault("models", {})
    for model in models:
        entries[model] = measure(model)
        print(format_table(model, entries[model]), flush=True)
    for key in ("models", "baseline"):
        if key in results:
            table = results[key] if key == "models" else results[key]["models"]
            ordered = {name: table[name] for name in SUITES if name in table}
            table.clear()
            table.update(ordered)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def format_table(model: str, entry: dict[str, Any]) -> str:
    """One model's table as aligned text; shifts under a floor are flagged."""
    metrics_ = list(FLOORS[model])
    lines = [f"{model}: floors " + ", ".join(f"{m} >= {v:g}" for m, v in FLOORS[model].items())]
    lines.append(f"  {'shift':<20}" + "".join(f"{m:>16}" for m in metrics_) + "  samples")
    for row in entry["shifts"]:
        flag = "  below floor" if below_floor(model, row) else ""
        lines.append(
            f"  {row['shift']:<20}" + "".join(f"{row[m]:>16.4f}" for m in metrics_) + f"  {row['samples']}{flag}"
        )
    return "\n".join(lines)
