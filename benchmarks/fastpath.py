"""Fast-path measurements: decoders and resizers, payload sizes between deployments, thread layout,
and the HTTP app's own cost per request.

    python -m benchmarks.fastpath --model resnet18 --seconds 5

Each variant produces the same model input as the served pipeline (the weights' resize, crop
and normalisation); the table says what each costs per image on one thread. The HTTP apps are
called in-process (ASGI, no socket) over a model that answers at once: what a replica's event loop
spends on one :predict before and after the model, by the route that serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvf
from PIL import Image
from torchvision.io import decode_jpeg
from torchvision.models import ResNet18_Weights

from benchmarks.images import jpeg_images
from benchmarks.pipeline import weights_for
from benchmarks.raw import in_processes
from contract.answers import ClassificationPrediction, Label, PredictResponse
from deployments.args import AuthArgs, LimitsArgs
from deployments.cards import model_card
from deployments.gateway import Gateway, LocalHandle
from deployments.rest.app import create_app, create_model_app
from deployments.topology import hot_route
from models.classifiers import uint8_transform
from models.images import decode_image
from models.registry import get_spec

RESULTS = Path(__file__).resolve().parent / "results"


def upscaled(data: bytes, size: tuple[int, int]) -> bytes:
    """A bigger JPEG of the same photo (phone-camera sizes, where draft decoding matters)."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def variants(resize: int, crop: int) -> dict[str, Callable[[bytes], torch.Tensor]]:
    """Name -> JPEG bytes to a normalised CHW float tensor, each a different route."""
    spec = get_spec("resnet18", weights_for("resnet18"))
    preset = ResNet18_Weights.DEFAULT.transforms()

    def before(data: bytes) -> torch.Tensor:  # the weights' own preset: transforms v1 resizes in float
        result: torch.Tensor = preset(tvf.pil_to_tensor(decode_image(data, "RGB")))
        return result

    def full_decode(data: bytes) -> torch.Tensor:  # the same steps on uint8 kernels, whole JPEG decoded
        return spec.preprocess(decode_image(data, "RGB"))

    def served(data: bytes) -> torch.Tensor:  # what vision-maas runs: DCT-scaled decode of big JPEGs too
        return spec.preprocess(decode_image(data, "RGB", min_side=spec.decode_min_side))

    finish = uint8_transform(preset)  # the served steps on a uint8 CHW tensor

    def torchvision_decode(data: bytes) -> torch.Tensor:
        return finish(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)))

    def pil_resize(data: bytes) -> torch.Tensor:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        width, height = img.size
        scale = resize / min(width, height)
        img = img.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR, reducing_gap=2.0)
        chw = tvf.center_crop(tvf.pil_to_tensor(img), [crop])
        normalised: torch.Tensor = tvf.normalize(tvf.to_dtype(chw, torch.float32, scale=True), preset.mean, preset.std)
        return normalised

    return {
        "PIL decode, weights preset (v1 resize in float)": before,
        "PIL decode, v2 uint8 resize": full_decode,
        "served: PIL decode at reduced JPEG scale, v2 uint8 resize": served,
        "torchvision.io.decode_jpeg, v2 uint8 resize": torchvision_decode,
        "PIL decode, PIL resize": pil_resize,
    }


def time_variant(function: Callable[[bytes], torch.Tensor], images: list[bytes], seconds: float) -> float:
    """Median ms per image over repeated passes of `images`."""
    for data in images:
        function(data)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for data in images:
            started = time.perf_counter()
            function(data)
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def decode_table(seconds: float) -> list[dict[str, object]]:
    """Every variant on the 640x480 photos and on 2560x1920 ones, with its agreement to the served input."""
    torch.set_num_threads(1)
    base = jpeg_images("640x480")
    sets = {"640x480": base, "2560x1920": [upscaled(d, (2560, 1920)) for d in base[:3]]}
    routes = variants(256, 224)
    reference = routes["PIL decode, weights preset (v1 resize in float)"]
    rows: list[dict[str, object]] = []
    for size, images in sets.items():
        for name, function in routes.items():
            diff = max(float((function(d) - reference(d)).abs().mean()) for d in images)
            rows.append(
                {
                    "images": size,
                    "route": name,
                    "ms_per_image": time_variant(function, images, seconds),
                    "mean_abs_diff": diff,
                }
            )
    return rows


def payloads() -> list[dict[str, object]]:
    """Bytes that would cross from ingress to model replica per 640x480 image, by form."""
    data = jpeg_images("640x480")[0]
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return [
        {"form": "encoded JPEG (what crosses today)", "bytes": len(data)},
        {"form": "decoded uint8 HxWx3", "bytes": decoded.nbytes},
        {"form": "model input uint8 3x224x224", "bytes": 3 * 224 * 224},
        {"form": "model input float32 3x224x224 (never sent)", "bytes": 3 * 224 * 224 * 4},
    ]


def thread_layout(model: str, seconds: float) -> list[dict[str, object]]:
    """One process with 2 torch threads vs two processes with 1 thread each, raw pipeline, batch 16."""

    one = in_processes(model, "640x480", 16, 2, seconds, processes=1)
    two = in_processes(model, "640x480", 16, 1, seconds, processes=2)
    return [
        {"layout": "1 replica x 2 threads", "images_per_s": one["images_per_s"]},
        {"layout": "2 replicas x 1 thread", "images_per_s": two["images_per_s"]},
    ]


class _Instant:
    """A classifier that answers at once: the HTTP app's cost alone."""

    async def predict(self, items: list[Any], params: Any) -> PredictResponse:
        top = ClassificationPrediction(labels=[Label(label="7", index=7, score=0.98)])
        return PredictResponse(
            model="digits_cnn", model_version="v1", weights="bundled", predictions=[top] * len(items)
        )


def http_apps(seconds: float, rounds: int = 5) -> list[dict[str, object]]:
    """µs per :predict (one 224x224 JPEG, `top_k` in the query) through the catalogue application's FastAPI
    route and through a model application's hot route, in interleaved rounds; the median round."""
    spec = get_spec("digits_cnn", weights_for("digits_cnn"))
    gateway = Gateway(
        {spec.name: LocalHandle(_Instant())}, {spec.name: model_card(spec)}, LimitsArgs(), AuthArgs(enabled=False), None
    )
    path = hot_route("/", spec.name, "predict")
    body = jpeg_images("224x224")[0]
    apps = {
        "catalogue application (FastAPI route)": (create_app(gateway), ""),
        "model application (hot route)": (create_model_app(gateway, "predict"), path),
    }

    async def one(app: Any, root_path: str) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"top_k=1",
            "root_path": root_path,  # Serve mounts a model application at its hot verb's path
            "headers": [(b"content-type", b"image/jpeg"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        statuses = []

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        assert statuses == [200], statuses

    async def per_request(app: Any, root_path: str) -> float:
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds / rounds / len(apps):
            for _ in range(100):
                await one(app, root_path)
            count += 100
        return (time.perf_counter() - started) / count * 1e6

    async def measure() -> dict[str, list[float]]:
        for app, root_path in apps.values():  # warm: first-call imports and caches
            for _ in range(200):
                await one(app, root_path)
        times: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(rounds):
            for name, (app, root_path) in apps.items():
                times[name].append(await per_request(app, root_path))
        return times

    logger = logging.getLogger("ray.serve")  # the access log's handlers are Serve's, in a replica
    logger.disabled = True
    try:
        times = asyncio.run(measure())
    finally:
        logger.disabled = False
    return [{"app": name, "us_per_request": statistics.median(rounds_us)} for name, rounds_us in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = {
        "decode": decode_table(args.seconds),
        "payloads": payloads(),
        "threads": thread_layout(args.model, 10.0),
        "http": http_apps(args.seconds * 2),
    }
    lines = ["| images | route | ms/image (1 thread) | mean abs diff to the preset |", "|---|---|---:|---:|"]
    lines += [
        f"| {r['images']} | {r['route']} | {r['ms_per_image']:.2f} | {r['mean_abs_diff']:.4f} |"
        for r in result["decode"]
    ]
    lines += ["", "| payload per 640x480 image | bytes |", "|---|---:|"]
    lines += [f"| {r['form']} | {r['bytes']:,} |" for r in result["payloads"]]
    lines += ["", f"| {args.model} raw pipeline, batch 16 | images/s |", "|---|---:|"]
    lines += [f"| {r['layout']} | {r['images_per_s']:.1f} |" for r in result["threads"]]
    lines += ["", "| HTTP app, one :predict in-process, model answering at once | µs/request |", "|---|---:|"]
    lines += [f"| {r['app']} | {r['us_per_request']:.0f} |" for r in result["http"]]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fastpath.json").write_text(json.dumps(result, indent=1))
    (args.out / "fastpath.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
