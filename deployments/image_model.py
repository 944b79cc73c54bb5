"""ImageModel: the one generic model deployment, bound once per configured model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from deployments.args import ArtifactsArgs, BatchConfig, LimitsArgs, ModelArgs
from deployments.artifacts import verify_weights
from deployments.errors import InvalidParameters
from models.images import ImageError, ImageLimits, decode_image
from models.registry import ModelSpec, get_spec

logger = logging.getLogger("ray.serve")


def _replica_threads() -> int:
    """Torch intra-op threads = the CPUs Ray assigned to this replica (at least one)."""
    try:
        cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
    except Exception:  # not inside a Ray worker (direct construction in tests)
        cpus = 1.0
    return max(1, round(cpus))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class ImageModel:
    """Decode and preprocess each request, then run it through a dynamically batched forward."""

    def __init__(self, model: ModelArgs, limits: LimitsArgs, artifacts: ArtifactsArgs) -> None:
        self._spec: ModelSpec = get_spec(model.registry_key, model.weights, model.sha256, model.name)
        # Before any byte of the weights is loaded: a changed, added or unsigned file stops the replica.
        verified = verify_weights(self._spec, model, artifacts)
        if verified:
            logger.info(verified)
        self._limits = ImageLimits(max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
        self._threads = _replica_threads()
        torch.set_num_threads(self._threads)
        use_cuda = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        self._device = torch.device("cuda" if use_cuda else "cpu")
        started = time.perf_counter()
        self._module = self._spec.build().to(self._device)
        self._load_seconds = time.perf_counter() - started
        self._started_at = time.time()
        # One worker: batches run one at a time off the event loop, so the loop keeps
        # decoding incoming requests while the model computes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._batch = BatchConfig()
        self._batch_counts: Counter[int] = Counter()
        self._batch_seconds: defaultdict[int, float] = defaultdict(float)
        logger.info(
            "model %s loaded in %.2fs on %s with %d threads (weights %s)",
            self._spec.name,
            self._load_seconds,
            self._device,
            self._threads,
            self._spec.weights.label,
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply `user_config` batching settings live, without restarting the replica."""
        self._batch = BatchConfig.model_validate(user_config or {})
        # serve.batch adds these setters to the method; Ray's decorator is untyped.
        self._forward_batch.set_max_batch_size(self._batch.max_batch_size)  # type: ignore[attr-defined]
        self._forward_batch.set_batch_wait_timeout_s(self._batch.batch_wait_timeout_s)  # type: ignore[attr-defined]

    def check_health(self) -> None:
        """Raise if the replica can no longer serve (Serve then replaces it)."""
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _forward_batch(self, inputs: list[torch.Tensor]) -> list[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, inputs)

    def _run(self, inputs: list[torch.Tensor]) -> list[Any]:
        started = time.perf_counter()
        with torch.inference_mode():
            batch = [x.to(self._device, non_blocking=True) for x in inputs]
            outputs = [_to_cpu(out) for out in self._spec.forward(self._module, batch)]
        self._batch_counts[len(inputs)] += 1
        self._batch_seconds[len(inputs)] += time.perf_counter() - started
        return outputs

    def _prepare(self, images: list[bytes]) -> list[torch.Tensor]:
        """Decode and preprocess every image; an error names the image when there are several."""
        tensors = []
        # One decode budget for the whole request, not per image: 64 slow images must not add up.
        deadline = time.monotonic() + self._limits.max_decode_seconds
        for index, data in enumerate(images):
            try:
                image = decode_image(data, self._spec.image_mode, self._limits, deadline=deadline)
                tensors.append(self._spec.preprocess(image))
            except ImageError as exc:
                if len(images) == 1:
                    raise
                raise type(exc)(f"image {index}: {exc}") from None
        return tensors

    async def _forward_each(self, tensors: Sequence[torch.Tensor]) -> list[Any]:
        # Every image enters the batch queue on its own, so one request's images and other
        # requests' images share batches.
        return list(await asyncio.gather(*(self._forward_batch(t) for t in tensors)))

    def _envelope(self) -> dict[str, Any]:
        weights = self._spec.weights
        envelope: dict[str, Any] = {
            "model": self._spec.name,
            "model_version": weights.version,
            "weights": weights.label,
        }
        if weights.source == "random":
            envelope["warning"] = "random weights: predictions are meaningless (load testing only)"
        return envelope

    async def predict(self, images: list[bytes], parameters: dict[str, Any]) -> dict[str, Any]:
        """Task-shaped JSON for each encoded image, in order."""
        tensors = self._prepare(images)  # bad input fails here, before batching, alone
        outputs = await self._forward_each(tensors)
        predictions = self._spec.postprocess(outputs, [parameters] * len(outputs))
        return {**self._envelope(), "predictions": predictions}

    async def infer(self, images: list[bytes] | None, tensor: np.ndarray | None) -> dict[str, np.ndarray]:
        """Open Inference Protocol: encoded images or preprocessed float32 NCHW -> named outputs."""
        if images is not None:
            tensors = self._prepare(images)
        elif tensor is not None:
            expected = self._spec.input_shape
            if tensor.ndim != 4 or tuple(tensor.shape[1:]) != expected:
                raise InvalidParameters(
                    f"input tensor shape {list(tensor.shape)} does not match [-1, {', '.join(map(str, expected))}]"
                )
            if not np.isfinite(tensor).all():
                raise InvalidParameters("input tensor holds NaN or infinite values")
            # Arrays arrive read-only (zero-copy from the object store); torch needs its own copy.
            tensors = list(torch.from_numpy(np.array(tensor, dtype=np.float32)).unbind(0))
        else:
            raise InvalidParameters("no input given")
        outputs = await self._forward_each(tensors)
        return self._spec.tensor_outputs(outputs)

    def metadata(self) -> dict[str, Any]:
        """Catalogue entry: task, input, labels, weights, live batching settings, device."""
        spec = self._spec
        return {
            "name": spec.name,
            "task": spec.task.value,
            "family": spec.family,
            "description": spec.description,
            "input": {"size": list(spec.input_size), "channels": spec.channels, "mode": spec.image_mode},
            "labels": list(spec.categories),
            "weights": {
                "source": spec.weights.source,
                "name": spec.weights.name,
                "sha256": spec.weights.sha256,
                "version": spec.weights.version,
            },
            "model_version": spec.weights.version,
            "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in spec.outputs],
            "batching": self._batch.model_dump(),
            "device": str(self._device),
            "threads": self._threads,
            "load_seconds": round(self._load_seconds, 3),
            "started_at": round(self._started_at, 3),
        }

    def stats(self) -> dict[str, Any]:
        """Batches executed by this replica, by batch size (Triton statistics extension shape)."""
        return {
            "inference_count": sum(size * n for size, n in self._batch_counts.items()),
            "execution_count": sum(self._batch_counts.values()),
            "batch_stats": [
                {"batch_size": size, "count": self._batch_counts[size], "seconds": round(self._batch_seconds[size], 6)}
                for size in sorted(self._batch_counts)
            ],
        }

    def ready(self) -> bool:
        """True once the model is loaded (the constructor has returned)."""
        return True
