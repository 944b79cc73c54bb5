"""ImageModel: the one generic model deployment, bound once per configured model.

Its replica is also the HTTP ingress of the model's hot verb when the model has its own Serve
application (deployments.topology): the same gateway and routes as the catalogue's, calling this
replica's methods in-process, so `:predict` costs no hop between replicas."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import io
import logging
import os
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import ray
import torch
from PIL import Image
from pydantic import BaseModel
from ray import serve

import deployments.batching as batching
from contract.answers import ExplainResponse, GenerateResponse, PredictResponse
from contract.params import MAX_SEED, PARAMS_BY_TASK, ExplainParams
from contract.tasks import IMAGE_TASKS
from deployments import v2
from deployments.args import ArtifactsArgs, AuthArgs, BatchConfig, LimitsArgs, ModelArgs
from deployments.artifacts import verify_weights
from deployments.batching import SloBatchController
from deployments.cards import model_card
from deployments.errors import InvalidParameters, Overloaded, ServingError
from deployments.gateway import Gateway, LocalHandle
from deployments.rest.app import create_model_app
from deployments.schemas import ModelCard
from deployments.telemetry import ModelMetrics
from deployments.topology import task_verb
from models.backends import apply_backend
from models.images import ImageError, ImageLimits, decode_image, original_size
from models.registry import Item, ModelSpec, Task, get_spec
from models.video_io import VideoLimits, decode_clip, decode_frames

_Prepared = TypeVar("_Prepared")
# Set while a request holds its admission (ImageModel.admitted), so _request does not take a second.
_ADMITTED: contextvars.ContextVar[bool] = contextvars.ContextVar("vision_maas_admitted", default=False)

logger = logging.getLogger("ray.serve")


THREADS_ENV = "VISION_MAAS_TORCH_THREADS"
# The batching a deployment without a user_config gets (BatchConfig holds the defaults).
_DEFAULT_BATCH = BatchConfig()


def _replica_threads() -> int:
    """Torch intra-op threads = the CPUs Ray assigned to this replica (at least one).

    `VISION_MAAS_TORCH_THREADS` in the replica's environment (`ray_actor_options.runtime_env.env_vars`)
    overrides it: several replicas may share cores they each use whole, one at a time (benchmarks).
    """
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    if not ray.is_initialized():  # direct construction in tests: asking Ray would start a local one
        return 1
    try:
        cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
    except Exception:  # a driver, not a Ray worker
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


class ImageModel:
    """Decode and preprocess each request, then run it through a dynamically batched forward.

    A plain class (tests build it without Serve); ImageModelDeployment, below, is what Serve runs."""

    def __init__(
        self,
        model: ModelArgs,
        limits: LimitsArgs,
        artifacts: ArtifactsArgs,
        auth: AuthArgs | None = None,
        application: str | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        """`spec`, when given, is a model resolved and verified by its caller (a trained version of
        the model store, deployments.store_models); otherwise `model` is resolved in the registry."""
        self._served_limits = limits
        self._auth = auth or AuthArgs(enabled=False)
        # The catalogue application whose rate limiter this replica's own routes use.
        self._application = application
        if spec is None:
            spec = get_spec(model.registry_key, model.weights, model.sha256, model.name)
            # Before any byte of the weights is loaded: a changed, added or unsigned file stops the replica.
            verified = verify_weights(spec, model, artifacts)
            if verified:
                logger.info(verified)
        self._spec: ModelSpec = spec
        self._limits = ImageLimits(max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
        self._video_limits = VideoLimits(
            max_bytes=limits.max_body_bytes,
            max_frames=limits.max_video_frames,
            max_duration_s=limits.max_video_seconds,
            max_pixels_per_frame=limits.max_image_pixels,
        )
        self._threads = _replica_threads()
        torch.set_num_threads(self._threads)
        use_cuda = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        self._device = torch.device("cuda" if use_cuda else "cpu")
        started = time.perf_counter()
        # Explanations keep the eager module: they need autograd, which ONNX Runtime and int8 lack.
        self._eager = self._spec.build().to(self._device)
        self._module = apply_backend(self._eager, self._spec, model.backend)
        self._backend = model.backend
        self._load_seconds = time.perf_counter() - started
        self._started_at = time.time()
        # One worker: batches run one at a time off the event loop, so the loop keeps
        # decoding incoming requests while the model computes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        # Decoding and preprocessing run here, off the event loop, which also answers HTTP when
        # this replica is its model's ingress: profiled, the loop was the bottleneck with them on it.
        self._prepare_executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="prepare")
        self._batch = _DEFAULT_BATCH
        # Batches form when the forward worker is free (deployments.batching.Batcher, not serve.batch).
        self._batcher: batching.Batcher[tuple[torch.Tensor, float], tuple[Any, int]] = batching.Batcher(
            self._forward_batch, _DEFAULT_BATCH.max_batch_size, _DEFAULT_BATCH.batch_wait_timeout_s
        )
        self._controller: SloBatchController | None = None
        self._warmed: set[int] = set()
        # Forward items/s by batch size, the max_batch_size values measured for, and the cap they give.
        self._items_per_s: dict[int, float] = {}
        self._measured_for: set[int] = set()
        self._measured_cap: int | None = None
        self._warmup_seconds = 0.0
        self._batch_counts: Counter[int] = Counter()
        self._batch_seconds: defaultdict[int, float] = defaultdict(float)
        self._ongoing = 0
        self._held = 0  # admitted requests (see admitted()), reading their body or computing
        self._metrics = ModelMetrics(self._spec.name, self._spec.weights.version)
        self._metrics.load_seconds.set(self._load_seconds)
        logger.info(
            "model %s loaded in %.2fs on %s with %d threads (weights %s)",
            self._spec.name,
            self._load_seconds,
            self._device,
            self._threads,
            self._spec.weights.label,
        )
        # Serve calls reconfigure only for a deployment with a user_config: the defaults apply otherwise.
        self._warm_up()

    def __serve_build_asgi_app__(self) -> Any:
        """The model's hot verb over HTTP, built in the replica after the constructor: the routes of
        deployments.rest over a gateway whose one model is this replica, called in-process."""
        limiter = None
        if self._auth.enabled and self._application is not None:
            limiter = serve.get_deployment_handle("RateLimiter", app_name=self._application)
        name = self._spec.name
        gateway = Gateway(
            {name: LocalHandle(self)}, {name: model_card(self._spec)}, self._served_limits, self._auth, limiter
        )
        return create_model_app(gateway, task_verb(self._spec.task), self.admitted)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply `user_config` batching settings live, without restarting the replica."""
        self._batch = BatchConfig.model_validate(user_config or {})
        self._batcher.batch_wait_timeout_s = self._batch.batch_wait_timeout_s
        self._warm_up()

    def _warm_up(self) -> None:
        """Run a request's whole path once, and the forward at batch 1 and at the batch cap, before
        the replica is ready; measure the forward's items/s by batch size to choose that cap.

        Serve marks a replica ready when its constructor and reconfigure have returned; without this
        the first requests would pay for memory allocation and kernel setup (oneDNN primitives,
        ONNX Runtime's first run, CUDA's lazy init) and for the decoder's and pre- and
        postprocessing's first calls. Batch sizes already run are not run again, and a
        max_batch_size already measured is not measured again. Without warm-up or measurement
        the cap is max_batch_size.
        """
        batch = self._batch
        measure = batch.warmup and batch.measure
        sizes = ({1} if measure else {1, batch.max_batch_size}) - self._warmed
        remeasure = measure and batch.max_batch_size not in self._measured_for
        stopped = None
        if batch.warmup and (sizes or remeasure):
            started = time.perf_counter()
            example, originals = self._warm_input()
            if sizes:
                for size in sorted(sizes):
                    outputs = self._forward([example] * size)
                    self._warmed.add(size)
                task_params = PARAMS_BY_TASK.get(self._spec.task)
                self._postprocess(outputs[:1], originals, task_params() if task_params is not None else None)
            if remeasure:
                stopped = self._measure(example)
            elapsed = time.perf_counter() - started
            self._warmup_seconds += elapsed
            logger.info("model %s warmed up at batch sizes %s in %.2fs", self._spec.name, sorted(self._warmed), elapsed)
        self._measured_cap = batching.choose_batch_cap(self._curve()) if measure else None
        if remeasure:
            logger.info(
                "model %s: batch cap %d of max_batch_size %d; forward items/s by batch size %s%s",
                self._spec.name,
                self._measured_cap,
                batch.max_batch_size,
                self._curve_facts(),
                f" ({stopped})" if stopped else "",
            )
        self._apply_cap()

    def _measure(self, example: torch.Tensor) -> str | None:
        """Time the forward at the sizes up to max_batch_size not timed yet; why it stopped early, if it did.

        On the forward thread, where batches run: a live reconfigure's measurement never runs beside
        a batch, and it times the forward as batches will run it.
        """
        new, stopped = self._executor.submit(
            batching.measure_throughput,
            lambda size: self._forward([example] * size),
            batching.batch_sizes(self._batch.max_batch_size),
            self._items_per_s,
        ).result()
        self._items_per_s.update(new)
        self._warmed.update(new)
        self._measured_for.add(self._batch.max_batch_size)
        return stopped

    def _curve(self) -> dict[int, float]:
        """The measured items/s of the batch sizes that count for the current max_batch_size."""
        return {
            size: self._items_per_s[size]
            for size in batching.batch_sizes(self._batch.max_batch_size)
            if size in self._items_per_s
        }

    def _curve_facts(self) -> dict[str, float]:
        """The curve as the catalogue and the log show it: items/s (rounded) by batch size."""
        return {str(size): round(rate, 1) for size, rate in self._curve().items()}

    def _apply_cap(self) -> None:
        """The batcher's cap: the measured one, else max_batch_size; with a p99 target, the SLO
        controller's, which starts at 1 and stays under that cap."""
        batch = self._batch
        cap = batch.max_batch_size if self._measured_cap is None else self._measured_cap
        self._controller = (
            None
            if batch.target_p99_ms is None
            else SloBatchController(batch.target_p99_ms, cap, batch.batch_wait_timeout_s)
        )
        self._batcher.max_batch_size = cap if self._controller is None else self._controller.cap

    def _warm_input(self) -> tuple[torch.Tensor, list[tuple[int, int] | None]]:
        """One input made as a request's is, and its original's size: a noise picture of the model's input
        size, JPEG-encoded, through the decoder and the model's own preprocess (a clip of it for
        video models), or a latent for generators."""
        spec = self._spec
        if spec.task == Task.GENERATION:
            return self._sample(1, 0, {})[0], [None]
        height, width = spec.input_size
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        try:
            if spec.task == Task.VIDEO_CLASSIFICATION:
                tensors, originals = self._prepare_clips([[buffer.getvalue()] * max(spec.clip_length, 2)])
            else:
                tensors, originals = self._prepare([buffer.getvalue()])
        except (ServingError, ImageError):
            # Not a picture this model takes (a size or mode it refuses): the forward alone, then.
            return torch.zeros(spec.input_shape), [(width, height)]
        return tensors[0], list(originals)

    def check_health(self) -> None:
        """Raise if the replica can no longer serve (Serve then replaces it)."""
        # A gauge recorded once, while the replica starts, can be missing from the node's export
        # (seen on a busy CI node); the periodic health check records it again so it is always there.
        self._metrics.load_seconds.set(self._load_seconds)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    async def _forward_batch(self, items: list[tuple[torch.Tensor, float]]) -> list[tuple[Any, int]]:
        loop = asyncio.get_running_loop()
        waits: list[float] = []
        results, batch_ms = await loop.run_in_executor(self._executor, self._run, items, waits)
        if self._controller is not None:
            cap = self._controller.observe(len(items), batch_ms, waits)
            if cap is not None:
                self._batcher.max_batch_size = cap
                logger.info("model %s: adaptive batch cap now %d", self._spec.name, cap)
        return results

    def _run(
        self, items: list[tuple[torch.Tensor, float]], waits: list[float] | None = None
    ) -> tuple[list[tuple[Any, int]], float]:
        """One batched forward pass: each item's output with the size of the batch it ran in, and its ms.

        Each item's queue wait (ms) is also appended to `waits` when given."""
        started = time.perf_counter()
        for _, enqueued in items:
            wait_ms = (started - enqueued) * 1000.0
            self._metrics.queue_wait.observe(wait_ms)
            if waits is not None:
                waits.append(wait_ms)
        outputs = self._forward([x for x, _ in items])
        seconds = time.perf_counter() - started
        size = len(items)
        self._batch_counts[size] += 1
        self._batch_seconds[size] += seconds
        self._metrics.batch_size.observe(size)
        self._metrics.batch_execution.observe(seconds * 1000.0)
        return [(out, size) for out in outputs], seconds * 1000.0

    def _forward(self, tensors: list[torch.Tensor]) -> list[Any]:
        with torch.inference_mode():
            batch = [x.to(self._device, non_blocking=True) for x in tensors]
            return [_to_cpu(out) for out in self._spec.forward(self._module, batch)]

    @contextlib.contextmanager
    def _request(self, kind: str, items: int) -> Iterator[dict[str, Any]]:
        """Count the request as ongoing and log it once done: model, sizes, latency, outcome."""
        with contextlib.ExitStack() as admission:
            if not _ADMITTED.get():  # a call over a handle; this replica's own routes admit earlier
                admission.enter_context(self.admitted())
            with self._counted(kind, items) as facts:
                yield facts

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the replica's `max_requests` places, or refuse at once with 503 `overloaded`,
        in the API's JSON (Serve's own limits for models are set above this one: they would answer
        in plain text). The replica's own routes take it before reading the body, so a refusal
        costs no upload and no parsing; calls over a handle take it in _request."""
        if self._held >= self._batch.max_requests:
            raise Overloaded(
                f"model {self._spec.name!r} is at capacity ({self._batch.max_requests} requests); retry later"
            )
        self._held += 1
        token = _ADMITTED.set(True)
        try:
            yield
        finally:
            _ADMITTED.reset(token)
            self._held -= 1

    @contextlib.contextmanager
    def _counted(self, kind: str, items: int) -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        facts: dict[str, Any] = {"model": self._spec.name, "call": kind, "items": items}
        self._ongoing += 1
        self._metrics.ongoing.set(self._ongoing)
        outcome = "ok"
        try:
            yield facts
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._ongoing -= 1
            self._metrics.ongoing.set(self._ongoing)
            facts.update(outcome=outcome, latency_ms=round((time.perf_counter() - started) * 1000.0, 2))
            # Facts only: never image bytes or parameters (they may carry client data).
            logger.info("%s %s %s", self._spec.name, kind, outcome, extra={"ray_serve_extra_fields": facts})

    def _require(self, *tasks: Task) -> None:
        if self._spec.task not in tasks:
            raise InvalidParameters(f"model {self._spec.name!r} ({self._spec.task.value}) does not support this call")

    def _decode(self, item: bytes | np.ndarray, deadline: float, min_side: int | None = None) -> Image.Image:
        """An encoded image, or a uint8 HxW(xC) array decoded once upstream (annotate), in the spec's mode."""
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (2, 3):
                raise InvalidParameters("decoded images must be uint8 HxW or HxWxC arrays")
            return Image.fromarray(item).convert(self._spec.image_mode)
        return decode_image(item, self._spec.image_mode, self._limits, deadline=deadline, min_side=min_side)

    def _decode_all(self, images: Sequence[bytes | np.ndarray], min_side: int | None = None) -> list[Image.Image]:
        """Decode every image; an error names the image when there are several."""
        decoded = []
        # One decode budget for the whole request, not per image: 64 slow images must not add up.
        deadline = time.monotonic() + self._limits.max_decode_seconds
        for index, data in enumerate(images):
            try:
                decoded.append(self._decode(data, deadline, min_side))
            except ImageError as exc:
                if len(images) == 1:
                    raise
                raise type(exc)(f"image {index}: {exc}") from None
        return decoded

    def _prepare(self, images: Sequence[bytes | np.ndarray]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """Preprocessed tensors and each image's original (width, height), for postprocess."""
        # Only the preprocess sees these pixels, so a JPEG may decode at a reduced scale; explain
        # and the other tasks draw on the original image and decode it whole.
        decoded = self._decode_all(images, self._spec.decode_min_side)
        tensors = [self._preprocess(self._spec.preprocess, image) for image in decoded]
        return tensors, [original_size(image) for image in decoded]

    @staticmethod
    def _preprocess(function: Any, value: Any) -> torch.Tensor:
        try:
            tensor: torch.Tensor = function(value)
        except ValueError as exc:
            raise InvalidParameters(str(exc)) from None
        return tensor

    def _prepare_clips(self, clips: Sequence[bytes | list[bytes]]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """Video: each clip (an encoded video, or its still frames in order) -> one tensor."""
        preprocess_clip = self._spec.preprocess_clip
        if preprocess_clip is None:
            raise InvalidParameters(f"model {self._spec.name!r} takes no clips")
        decoded: list[list[Image.Image]] = []
        # Only the frames the model samples are kept in memory; every frame still counts against the limits.
        keep = self._spec.clip_length or None
        for index, clip in enumerate(clips):
            try:
                if isinstance(clip, list):
                    frames = decode_frames(
                        clip, self._video_limits, self._limits, self._spec.image_mode, max_output_frames=keep
                    )
                else:
                    frames = decode_clip(clip, self._video_limits, self._spec.image_mode, max_output_frames=keep)
            except ImageError as exc:
                if len(clips) == 1:
                    raise
                raise type(exc)(f"clip {index}: {exc}") from None
            decoded.append(frames)
        tensors = [self._preprocess(preprocess_clip, frames) for frames in decoded]
        return tensors, [(frames[0].width, frames[0].height) for frames in decoded]

    async def _forward_each(self, tensors: Sequence[torch.Tensor], facts: dict[str, Any]) -> list[Any]:
        # Every item enters the batch queue on its own, so one request's items and other
        # requests' items share batches.
        now = time.perf_counter()
        if self._ongoing == 1 and len(tensors) == 1:
            # The only request in this replica: nothing can join its batch, so waiting
            # batch_wait_timeout_s for one would only add latency. The single forward worker
            # still runs it after any batch already computing.
            loop = asyncio.get_running_loop()
            results, _ = await loop.run_in_executor(self._executor, self._run, [(tensors[0], now)])
        else:
            results = await asyncio.gather(*(self._batcher((t, now)) for t in tensors))
        facts["batch_sizes"] = [size for _, size in results]
        return [out for out, _ in results]

    async def _timed_prepare(self, facts: dict[str, Any], prepare: Callable[[], _Prepared]) -> _Prepared:
        started = time.perf_counter()
        prepared = await asyncio.get_running_loop().run_in_executor(self._prepare_executor, prepare)
        elapsed = (time.perf_counter() - started) * 1000.0
        self._metrics.preprocess.observe(elapsed)
        facts["preprocess_ms"] = round(elapsed, 2)
        return prepared

    def _postprocess(
        self, outputs: Sequence[Any], originals: Sequence[tuple[int, int] | None], params: BaseModel | None
    ) -> list[Any]:
        """The task's answer per item; `params` are the task's, validated by the API (or None)."""
        try:
            return list(self._spec.postprocess(outputs, [Item(params, size) for size in originals]))
        except ValueError as exc:
            raise InvalidParameters(str(exc)) from None

    def _envelope(self) -> dict[str, Any]:
        """The fields every answer starts with: which model and weights answered."""
        weights = self._spec.weights
        envelope: dict[str, Any] = {
            "model": self._spec.name,
            "model_version": weights.version,
            "weights": weights.label,
        }
        if weights.source == "random":
            envelope["warning"] = "random weights: predictions are meaningless (load testing only)"
        return envelope

    async def predict(self, images: list[bytes | np.ndarray], params: BaseModel) -> PredictResponse:
        """The task's answer for each image (encoded, or decoded upstream as uint8 arrays), in order;
        `params` is the task's parameters model (contract.params), already validated."""
        self._require(*IMAGE_TASKS)
        with self._request("predict", len(images)) as facts:
            # Bad input fails here, before batching, alone.
            tensors, originals = await self._timed_prepare(facts, lambda: self._prepare(images))
            outputs = await self._forward_each(tensors, facts)
            return PredictResponse(**self._envelope(), predictions=self._postprocess(outputs, originals, params))

    async def predict_decoded(self, image: np.ndarray, params: BaseModel) -> PredictResponse:
        """:predict on one image decoded upstream (annotate): a uint8 array, shared through the object store."""
        return await self.predict([image], params)

    async def predict_clips(self, clips: list[bytes | list[bytes]], params: BaseModel) -> PredictResponse:
        """Video classification of each clip: an encoded video, or its still frames in order."""
        self._require(Task.VIDEO_CLASSIFICATION)
        with self._request("predict_clips", len(clips)) as facts:
            tensors, originals = await self._timed_prepare(facts, lambda: self._prepare_clips(clips))
            outputs = await self._forward_each(tensors, facts)
            return PredictResponse(**self._envelope(), predictions=self._postprocess(outputs, originals, params))

    def _sample(self, num_images: int, seed: int, parameters: dict[str, Any]) -> list[torch.Tensor]:
        if self._spec.sample is None:
            raise InvalidParameters(f"model {self._spec.name!r} does not generate images")
        try:
            return self._spec.sample(num_images, seed, parameters)
        except ValueError as exc:
            raise InvalidParameters(str(exc)) from None

    async def generate(self, num_images: int, seed: int | None, parameters: dict[str, Any]) -> GenerateResponse:
        """`num_images` generated images; the same seed and parameters give the same images."""
        self._require(Task.GENERATION)
        seed = secrets.randbelow(MAX_SEED) if seed is None else seed
        with self._request("generate", num_images) as facts:
            inputs = await self._timed_prepare(facts, lambda: self._sample(num_images, seed, parameters))
            outputs = await self._forward_each(inputs, facts)
            images = self._postprocess(outputs, [None] * len(outputs), None)
            return GenerateResponse(**self._envelope(), seed=seed, images=images)

    async def explain(self, images: list[bytes], params: ExplainParams) -> ExplainResponse:
        """An explanation map (Grad-CAM or attention rollout) of the classifier's decision per image."""
        if not self._spec.explainable:
            raise InvalidParameters(f"model {self._spec.name!r} ({self._spec.task.value}) has no explanation maps")
        with self._request("explain", len(images)) as facts:
            decoded = await self._timed_prepare(facts, lambda: self._decode_all(images))
            return ExplainResponse(**self._envelope(), explanations=await self._explain_each(decoded, params))

    async def _explain_each(self, decoded: list[Image.Image], params: ExplainParams) -> list[Any]:
        from models.explain import ExplanationError, explain_image  # only replicas that explain import it

        loop = asyncio.get_running_loop()
        explanations = []
        for image in decoded:
            # On the forward thread: explanations and batches never use the module at the same time.
            call = functools.partial(explain_image, self._spec, self._eager, image, params, device=self._device)
            try:
                explanations.append(await loop.run_in_executor(self._executor, call))
            except (ValueError, ExplanationError) as exc:
                # A bad target, or a model with nothing Grad-CAM can use: the request cannot be met.
                raise InvalidParameters(str(exc)) from None
        return explanations

    async def infer(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Open Inference Protocol: the task's named inputs (see the model's v2 metadata) -> named outputs."""
        spec = self._spec
        with self._request("infer", 0) as facts:
            tensors = await self._timed_prepare(facts, lambda: self._infer_inputs(inputs))
            if not tensors:
                raise InvalidParameters("no input given")
            facts["items"] = len(tensors)
            return spec.tensor_outputs(await self._forward_each(tensors, facts))

    def _infer_inputs(self, inputs: dict[str, Any]) -> list[torch.Tensor]:
        tensor = inputs.get(v2.TENSOR_INPUT)
        if tensor is not None:
            return self._tensor_rows(tensor)
        if self._spec.task == Task.GENERATION:
            return self._latents_from_seeds(inputs.get(v2.SEED_INPUT), inputs.get(v2.LABEL_INPUT))
        if self._spec.task == Task.VIDEO_CLASSIFICATION:
            return self._prepare_clips(inputs.get(v2.VIDEO_INPUT) or [])[0]
        return self._prepare(inputs.get(v2.IMAGE_INPUT) or [])[0]

    def _tensor_rows(self, tensor: np.ndarray) -> list[torch.Tensor]:
        expected = self._spec.input_shape
        if tensor.ndim != len(expected) + 1 or tuple(tensor.shape[1:]) != expected:
            raise InvalidParameters(
                f"input tensor shape {list(tensor.shape)} does not match [-1, {', '.join(map(str, expected))}]"
            )
        if not np.isfinite(tensor).all():
            raise InvalidParameters("input tensor holds NaN or infinite values")
        # Arrays arrive read-only (zero-copy from the object store); torch needs its own copy.
        return list(torch.from_numpy(np.array(tensor, dtype=np.float32)).unbind(0))

    def _latents_from_seeds(self, seeds: np.ndarray | None, labels: np.ndarray | None) -> list[torch.Tensor]:
        if seeds is None:
            raise InvalidParameters(f"send {v2.SEED_INPUT!r} (INT64, one seed per image) or {v2.TENSOR_INPUT!r}")
        seeds = np.asarray(seeds).reshape(-1)
        if labels is not None and np.asarray(labels).size != seeds.size:
            raise InvalidParameters(f"{v2.LABEL_INPUT!r} needs one label per seed")
        if seeds.size and (seeds.min() < 0 or seeds.max() > MAX_SEED):
            raise InvalidParameters(f"seeds must lie in [0, {MAX_SEED}]")
        rows: list[torch.Tensor] = []
        for row, seed in enumerate(seeds.tolist()):
            params = {} if labels is None else {"label": int(np.asarray(labels).reshape(-1)[row])}
            rows.extend(self._sample(1, int(seed), params))
        return rows

    def card(self) -> ModelCard:
        """What a gateway knows of this model without asking it (deployments.cards)."""
        return model_card(self._spec)

    def metadata(self) -> dict[str, Any]:
        """Catalogue entry: task, input, labels, weights, live batching settings, device."""
        spec = self._spec
        return {
            "name": spec.name,
            "task": spec.task.value,
            "family": spec.family,
            "description": spec.description,
            "input": {
                "size": list(spec.input_size),
                "channels": spec.channels,
                "mode": spec.image_mode,
                "shape": list(spec.input_shape),
            },
            "labels": list(spec.categories),
            "weights": {
                "source": spec.weights.source,
                "name": spec.weights.name,
                "sha256": spec.weights.sha256,
                "version": spec.weights.version,
            },
            "model_version": spec.weights.version,
            "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in spec.outputs],
            "batching": self._batch.model_dump(exclude_none=True) | self._cap_facts(),
            "device": str(self._device),
            "threads": self._threads,
            "backend": self._backend,
            "load_seconds": round(self._load_seconds, 3),
            "started_at": round(self._started_at, 3),
        }

    def _cap_facts(self) -> dict[str, Any]:
        """The live caps: the measured one with its curve (items/s by batch size), the adaptive one."""
        facts: dict[str, Any] = {}
        if self._measured_cap is not None:
            facts |= {"measured_cap": self._measured_cap, "items_per_s": self._curve_facts()}
        if self._controller is not None:
            facts["adaptive_cap"] = self._controller.cap
        return facts

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


# The Serve deployments (options: deployments.app.MODEL_OPTIONS). In its own application the model is
# also the HTTP ingress of its hot verb (its app is built per replica); behind the catalogue's ingress
# in one application (build_app) it is not: Serve allows one ingress with an ASGI app per application.
ImageModelIngress = serve.deployment(serve.ingress()(ImageModel))
ImageModelDeployment = serve.deployment(ImageModel)
