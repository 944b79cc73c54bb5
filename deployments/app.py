"""build_app: the import path for `serve run`, `serve deploy` and the RayService."""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments import v2
from deployments.args import AppArgs
from deployments.auth import KeyStore, RateLimiter
from deployments.image_model import ImageModel
from deployments.ingress import Ingress
from deployments.ray_env import check_body_limit
from deployments.schemas import ModelCard, TensorMeta
from models.registry import ModelSpec, Task, get_spec
from models.weights import WeightsError

logger = logging.getLogger("ray.serve")


def v2_inputs(spec: ModelSpec) -> list[TensorMeta]:
    """The Open Inference Protocol inputs of a model: any ONE of them per request."""
    tensor = TensorMeta(name=v2.TENSOR_INPUT, datatype="FP32", shape=[-1, *spec.input_shape])
    if spec.task == Task.GENERATION:
        return [
            TensorMeta(name=v2.SEED_INPUT, datatype="INT64", shape=[-1]),
            TensorMeta(name=v2.LABEL_INPUT, datatype="INT64", shape=[-1]),
            tensor,
        ]
    if spec.task == Task.VIDEO_CLASSIFICATION:
        return [TensorMeta(name=v2.VIDEO_INPUT, datatype="BYTES", shape=[-1]), tensor]
    return [TensorMeta(name=v2.IMAGE_INPUT, datatype="BYTES", shape=[-1]), tensor]


# Each deployment's options where the Serve config's `deployments:` entry for it says nothing: the
# one home of these defaults. Serve applies a config's entries over them, so a config (and the
# chart's values) states only what it changes; a test holds the shipped ones to that.
INGRESS_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.5},
    "max_ongoing_requests": 256,
}
MODEL_OPTIONS: dict[str, Any] = {
    "ray_actor_options": {"num_cpus": 1},
    "max_ongoing_requests": 64,
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
}
# One replica: the one place that counts requests, shared by every ingress replica. A sliver of
# CPU keeps it off a head started with num-cpus 0, beside the other replicas.
LIMITER_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.05},
    "max_ongoing_requests": 1024,
}


def build_app(args: dict[str, Any]) -> Application:
    """Validate `args` (the config's `applications[].args`) and compose one deployment per model."""
    app_args = AppArgs.model_validate(args)
    check_body_limit(app_args.limits.max_body_bytes)
    cards: dict[str, ModelCard] = {}
    handles = {}
    for model in app_args.models:
        try:
            # Resolving the spec here checks weights names and pins before any replica starts;
            # loading the weights themselves happens in the replica.
            spec = get_spec(model.registry_key, model.weights, model.sha256, model.name)
        except WeightsError as exc:
            raise ValueError(f"model {model.name!r}: {exc}") from None
        cards[model.name] = ModelCard(
            name=spec.name,
            task=spec.task.value,
            version=spec.weights.version,
            labels=list(spec.categories),
            input_shape=spec.input_shape,
            inputs=v2_inputs(spec),
            outputs=[TensorMeta(name=o.name, datatype=o.datatype, shape=list(o.shape)) for o in spec.outputs],
            explainable=spec.explainable,
        )
        # serve.deployment turns the classes into Deployments; Ray's decorator is untyped.
        deployment = ImageModel.options(name=model.name, **MODEL_OPTIONS)  # type: ignore[attr-defined]
        handles[model.name] = deployment.bind(model, app_args.limits, app_args.artifacts)
    limiter = None
    if app_args.auth.enabled:
        # Fail at startup, naming what is missing, rather than on the first request.
        KeyStore.load(app_args.auth.keys_file, app_args.auth.keys_env)
        limiter = RateLimiter.options(**LIMITER_OPTIONS).bind()  # type: ignore[attr-defined]
    else:
        logger.warning("API key authentication is OFF (auth.enabled: false) for this application")
    ingress = Ingress.options(**INGRESS_OPTIONS)  # type: ignore[attr-defined]
    app: Application = ingress.bind(handles, cards, app_args.limits, app_args.auth, limiter)
    return app
