"""Measure a model on labelled data, in-process or through the HTTP API (`--url`).

    python -m models.evaluate digits_cnn                      # the model's bundled held-out set
    python -m models.evaluate digits_detector --data DIR      # a folder of labelled images
    python -m models.evaluate digits_segmenter --url http://127.0.0.1:8000 --json report.json
    python -m models.evaluate digits_cnn --export DIR         # write the bundled set as a folder
    python -m models.evaluate --shifted [MODEL ...]           # the shifted suites (models/shifted.py)

Classifiers (images or clips): accuracy, macro precision, recall and F1, confusion matrix.
Detectors: mAP at IoU 0.5 and AP per class. Segmenters: mean IoU and IoU per class.

Folder formats (the same that `--export` writes):
- classification: `DIR/<label>/<image>`; video classification: `DIR/<label>/<clip>` (MP4, WebM, GIF).
- detection: `DIR/annotations.json` = `{"images": [{"file": "a.png", "boxes": [[x1, y1, x2, y2], ...],
  "labels": ["3", ...]}]}`, images next to it.
- segmentation: `DIR/images/<name>.png` and `DIR/masks/<name>.png` (mode L, pixel = class index).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from contract.params import PARAMS_BY_TASK
from models import metrics
from models.heldout import Dataset
from models.registry import Item, ModelSpec, Task, get_spec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLIP_SUFFIXES = (".mp4", ".webm", ".mkv", ".gif", ".avi", ".mov")
BATCH = 16


# ---- data -------------------------------------------------------------------------------


def bundled_dataset(model: str, spec: ModelSpec, limit: int | None = None) -> Dataset:
    """The held-out data of a bundled model (its spec names it): data its training never saw."""
    if spec.held_out is None:
        raise SystemExit(f"{model} has no bundled held-out set; pass --data DIR")
    data: Dataset = spec.held_out(limit)
    return data


def folder_dataset(directory: Path, spec: ModelSpec, limit: int | None = None) -> Dataset:
    """Labelled data from a folder in the format of the model's task (see the module docstring)."""
    if spec.task in (Task.CLASSIFICATION, Task.VIDEO_CLASSIFICATION):
        suffixes = CLIP_SUFFIXES if spec.task == Task.VIDEO_CLASSIFICATION else IMAGE_SUFFIXES
        data = Dataset(spec.task)
        index = {label: i for i, label in enumerate(spec.categories)}
        for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
            if sub.name not in index:
                raise SystemExit(
                    f"folder {sub.name!r} is not a label of the model (labels: {', '.join(spec.categories[:10])}...)"
                )
            for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in suffixes):
                data.inputs.append(path.read_bytes())
                data.labels.append(index[sub.name])
                data.names.append(f"{sub.name}/{path.name}")
    elif spec.task == Task.DETECTION:
        data = Dataset(spec.task)
        index = {label: i for i, label in enumerate(spec.categories)}
        annotations = json.loads((directory / "annotations.json").read_text())
        for entry in annotations["images"]:
            data.inputs.append((directory / entry["file"]).read_bytes())
            labels = np.asarray([index[str(label)] for label in entry["labels"]], dtype=np.int64)
            data.boxes.append(metrics.Detections(np.asarray(entry["boxes"], dtype=np.float32).reshape(-1, 4), labels))
            data.names.append(entry["file"])
    elif spec.task == Task.SEGMENTATION:
        data = Dataset(spec.task)
        for path in sorted((directory / "images").iterdir()):
            mask = directory / "masks" / f"{path.stem}.png"
            data.inputs.append(path.read_bytes())
            data.masks.append(np.asarray(Image.open(mask).convert("L")))
            data.names.append(path.name)
    else:
        raise SystemExit(f"{spec.task.value} models cannot be evaluated from a folder")
    if not data.inputs:
        raise SystemExit(f"no labelled {spec.task.value} data under {directory}")
    if limit is not None:
        for name in ("inputs", "labels", "boxes", "masks", "names"):
            setattr(data, name, getattr(data, name)[:limit])
    return data


def export_dataset(data: Dataset, spec: ModelSpec, directory: Path) -> None:
    """Write `data` as a folder `folder_dataset` reads back."""
    directory.mkdir(parents=True, exist_ok=True)
    if data.task in (Task.CLASSIFICATION, Task.VIDEO_CLASSIFICATION):
        suffix = ".gif" if data.task == Task.VIDEO_CLASSIFICATION else ".png"
        for payload, label, name in zip(data.inputs, data.labels, data.names, strict=True):
            (directory / spec.categories[label]).mkdir(exist_ok=True)
            (directory / spec.categories[label] / f"{name}{suffix}").write_bytes(payload)
    elif data.task == Task.DETECTION:
        entries = []
        for payload, truth, name in zip(data.inputs, data.boxes, data.names, strict=True):
            (directory / f"{name}.png").write_bytes(payload)
            entries.append(
                {
                    "file": f"{name}.png",
                    "boxes": truth.boxes.tolist(),
                    "labels": [spec.categories[int(i)] for i in truth.labels],
                }
            )
        (directory / "annotations.json").write_text(json.dumps({"images": entries}, indent=1))
    elif data.task == Task.SEGMENTATION:
        (directory / "images").mkdir(exist_ok=True)
        (directory / "masks").mkdir(exist_ok=True)
        for payload, mask, name in zip(data.inputs, data.masks, data.names, strict=True):
            (directory / "images" / f"{name}.png").write_bytes(payload)
            Image.fromarray(mask.astype(np.uint8), "L").save(directory / "masks" / f"{name}.png")


# ---- predictions ------------------------------------------------------------------------

Predict = Callable[[list[bytes]], list[dict[str, Any]]]


def local_predictor(spec: ModelSpec, params: dict[str, Any]) -> Predict:
    """Predictions computed in this process exactly as a replica computes them."""
    from models.images import decode_image

    module = spec.build()
    # Validated once, as the API validates a request's parameters.
    task_params = PARAMS_BY_TASK[spec.task].model_validate(params)

    def predict(batch: list[bytes]) -> list[dict[str, Any]]:
        items = []
        tensors = []
        for payload in batch:
            if spec.task == Task.VIDEO_CLASSIFICATION and spec.preprocess_clip is not None:
                from models.video_io import decode_clip

                frames = decode_clip(payload, mode=spec.image_mode, max_output_frames=spec.clip_length or None)
                tensors.append(spec.preprocess_clip(frames))
                items.append(Item(task_params, (frames[0].width, frames[0].height)))
            else:
                image = decode_image(payload, spec.image_mode)
                tensors.append(spec.preprocess(image))
                items.append(Item(task_params, (image.width, image.height)))
        with torch.inference_mode():
            outputs = spec.forward(module, tensors)
        # As the server sends them: what `score` reads from either predictor.
        return [answer.model_dump(mode="json", exclude_none=True) for answer in spec.postprocess(outputs, items)]

    return predict


def http_predictor(url: str, model: str, params: dict[str, Any], api_key: str | None) -> Predict:
    """Predictions from a running server, through the Python client."""
    from maas.client import VisionClient

    client = VisionClient(url, api_key=api_key, timeout=120.0)

    def predict(batch: list[bytes]) -> list[dict[str, Any]]:
        predictions: list[dict[str, Any]] = client.predict(model, batch, **params)["predictions"]
        return predictions

    return predict


# ---- scoring ----------------------------------------------------------------------------


def score(data: Dataset, predictions: Sequence[dict[str, Any]], spec: ModelSpec) -> dict[str, Any]:
    """The task's metrics of `predictions` against `data`."""
    categories = list(spec.categories)
    if data.task in (Task.CLASSIFICATION, Task.VIDEO_CLASSIFICATION):
        predicted = [int(p["labels"][0]["index"]) for p in predictions]
        report = metrics.classification_report(data.labels, predicted, len(categories))
        return report.as_dict(categories)
    if data.task == Task.DETECTION:
        found = [
            metrics.Detections(
                np.asarray([d["box"] for d in p["detections"]], dtype=np.float32).reshape(-1, 4),
                np.asarray([d["index"] for d in p["detections"]], dtype=np.int64),
                np.asarray([d["score"] for d in p["detections"]], dtype=np.float32),
            )
            for p in predictions
        ]
        mean, per_class = metrics.detection_map(found, data.boxes, len(categories))
        return {"map_50": mean, "ap_50": {categories[c]: ap for c, ap in sorted(per_class.items())}}
    if data.task == Task.SEGMENTATION:
        confusion = np.zeros((len(categories), len(categories)), dtype=np.int64)
        for truth, prediction in zip(data.masks, predictions, strict=True):
            mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["mask"]))))
            confusion += metrics.segmentation_confusion(truth, mask, len(categories))
        mean_iou, ious = metrics.mean_iou(confusion)
        return {
            "mean_iou": mean_iou,
            "iou": {categories[c]: (None if np.isnan(v) else float(v)) for c, v in enumerate(ious)},
        }
    raise SystemExit(f"{data.task.value} models have no evaluation metrics")


def evaluate(data: Dataset, predict: Predict, spec: ModelSpec, batch: int = BATCH) -> dict[str, Any]:
    """Run every input through `predict` in batches and score the answers."""
    started = time.perf_counter()
    predictions: list[dict[str, Any]] = []
    for start in range(0, len(data.inputs), batch):
        predictions.extend(predict(data.inputs[start : start + batch]))
    elapsed = time.perf_counter() - started
    return {
        "model": spec.name,
        "task": spec.task.value,
        "samples": len(data.inputs),
        "seconds": round(elapsed, 3),
        "metrics": score(data, predictions, spec),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as aligned text: headline metrics, then the per-class ones."""
    lines = [f"{report['model']} ({report['task']}): {report['samples']} samples in {report['seconds']} s"]
    found = report["metrics"]
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "map_50", "mean_iou"):
        if key in found:
            lines.append(f"  {key:<16} {found[key]:.4f}")
    per_class = found.get("ap_50") or found.get("iou")
    if per_class:
        lines.append(
            "  per class: " + "  ".join(f"{k}={'-' if v is None else f'{v:.3f}'}" for k, v in per_class.items())
        )
    if "confusion" in found:
        labels = found["labels"]
        width = max(5, *(len(label) for label in labels)) + 1
        lines.append("  confusion (rows: truth, columns: prediction)")
        lines.append(" " * (width + 2) + "".join(f"{label[:width]:>{width}}" for label in labels))
        for label, row in zip(labels, found["confusion"], strict=True):
            lines.append(f"  {label[:width]:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param {item!r}: expected key=value")
        try:
            params[key] = json.loads(value)  # numbers and booleans as such, as the server parses them
        except json.JSONDecodeError:
            params[key] = value
    return params


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: evaluate one model and print (and optionally write) its report."""
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="*", help="registry model (in-process) or served model name (--url)")
    parser.add_argument(
        "--shifted", action="store_true", help="measure the shifted suites of the named (or every) bundled model"
    )
    parser.add_argument(
        "--baseline", metavar="WHAT", help="with --shifted: record the figures as the baseline, measured on WHAT"
    )
    parser.add_argument("--weights", help="weights choice (in-process), as in the Serve config")
    parser.add_argument("--data", type=Path, help="labelled folder; the model's bundled held-out set if omitted")
    parser.add_argument("--url", help="evaluate a running server through its HTTP API instead")
    parser.add_argument("--api-key", help="API key for --url")
    parser.add_argument("--param", action="append", default=[], help="prediction parameter key=value")
    parser.add_argument("--limit", type=int, help="evaluate at most this many samples")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--export", type=Path, help="write the bundled held-out set to this folder and stop")
    args = parser.parse_args(argv)
    if args.shifted:
        from models import shifted

        unknown = sorted(set(args.model) - set(shifted.SUITES))
        if unknown:
            raise SystemExit(f"no shifted suite for {', '.join(unknown)} (suites: {', '.join(shifted.SUITES)})")
        shifted.run(args.model or list(shifted.SUITES), args.json or shifted.RESULTS, baseline=args.baseline)
        return 0
    if len(args.model) != 1:
        raise SystemExit("name one model (or pass --shifted)")
    model = args.model[0]
    spec = get_spec(model, args.weights)
    data = folder_dataset(args.data, spec, args.limit) if args.data else bundled_dataset(model, spec, args.limit)
    if args.export:
        export_dataset(data, spec, args.export)
        print(f"wrote {len(data.inputs)} samples to {args.export}")
        return 0
    params = _parse_params(args.param)
    if spec.task == Task.DETECTION:
        # mAP integrates over scores: keep low-scoring detections unless asked otherwise.
        params.setdefault("score_threshold", 0.05)
    predict = http_predictor(args.url, model, params, args.api_key) if args.url else local_predictor(spec, params)
    report = evaluate(data, predict, spec)
    report["source"] = args.url or "in-process"
    report["data"] = str(args.data) if args.data else "bundled held-out set"
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
