"""The import paths of the Serve applications (`serve run`, `serve deploy`, the RayService).

- `build_app`: a config's authored application, listing its models once. Deployed as it is, it
  is one application: the ingress calls every model deployment over handles (two hops per request).
- `build_catalogue` and `build_model`: what deployments.topology expands that application into (and
  what `make serve`, the chart and the tests run): one application per model whose replica answers
  its hot verb itself, and the catalogue application for every other route.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments.args import MAX_REQUESTS, AppArgs
from deployments.auth import KeyStore, RateLimiter
from deployments.cards import model_card
from deployments.image_model import ImageModelDeployment, ImageModelIngress
from deployments.ingress import Ingress
from deployments.ray_env import check_body_limit
from deployments.schemas import ModelCard
from deployments.topology import model_app_name
from deployments.training import TrainingJobs
from deployments.training import runtime_env as training_runtime_env
from models.registry import get_spec
from models.weights import WeightsError

logger = logging.getLogger("ray.serve")


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
    # Above any admission limit (user_config.max_requests): the replica refuses in JSON, not Serve.
    "max_ongoing_requests": 2 * MAX_REQUESTS,
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
# One replica: the one queue of training jobs. It only queues, records and waits on Ray Train:
# the training itself runs in Ray Train's workers, on the resources TrainingArgs reserves.
TRAINING_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.05},
    "max_ongoing_requests": 1024,
}


# Trained versions of the model store (deployments.store_models), when training is on.
STORE_MODELS_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.5},
    "max_ongoing_requests": 256,
}


def _cards(app_args: AppArgs) -> dict[str, ModelCard]:
    """Every configured model's card; resolving the specs checks weights names and pins before any
    replica starts (loading the weights themselves happens in the replicas)."""
    cards: dict[str, ModelCard] = {}
    for model in app_args.models:
        try:
            spec = get_spec(model.registry_key, model.weights, model.sha256, model.name)
        except WeightsError as exc:
            raise ValueError(f"model {model.name!r}: {exc}") from None
        cards[model.name] = model_card(spec)
    return cards


def _args(args: dict[str, Any]) -> AppArgs:
    app_args = AppArgs.model_validate(args)
    check_body_limit(app_args.limits.max_body_bytes)
    return app_args


def _limiter(app_args: AppArgs) -> Application | None:
    """The RateLimiter deployment when API keys are on (the key store is checked now, naming what
    is missing, rather than on the first request)."""
    if not app_args.auth.enabled:
        logger.warning("API key authentication is OFF (auth.enabled: false) for this application")
        return None
    KeyStore.load(app_args.auth.keys_file, app_args.auth.keys_env)
    # serve.deployment turns the classes into Deployments; Ray's decorator is untyped.
    limiter: Application = RateLimiter.options(**LIMITER_OPTIONS).bind()  # type: ignore[attr-defined]
    return limiter


def _store_models(app_args: AppArgs) -> Application | None:
    """The deployment serving the model store's trained versions, when training is on."""
    if not app_args.training.enabled:
        return None
    # Imported here: the ingress's process needs none of torch's serving side.
    from deployments.store_models import StoreModelsDeployment

    store_models: Application = StoreModelsDeployment.options(**STORE_MODELS_OPTIONS).bind(  # type: ignore[attr-defined]
        app_args.training, app_args.limits
    )
    return store_models


def _training(app_args: AppArgs) -> Application | None:
    """The TrainingJobs deployment when training is enabled (the configured names stay untrainable)."""
    if not app_args.training.enabled:
        return None
    # The queue runs at training's priority: Ray Train's controller and helper actors are its
    # children and inherit its runtime env.
    options = TRAINING_OPTIONS | {
        "ray_actor_options": TRAINING_OPTIONS["ray_actor_options"]
        | {"runtime_env": training_runtime_env(app_args.training.niceness)}
    }
    jobs = TrainingJobs.options(**options)  # type: ignore[attr-defined]
    app: Application = jobs.bind(app_args.training, [model.name for model in app_args.models])
    return app


def _ingress(app_args: AppArgs, models: dict[str, Any], cards: dict[str, ModelCard]) -> Application:
    ingress = Ingress.options(**INGRESS_OPTIONS)  # type: ignore[attr-defined]
    app: Application = ingress.bind(
        models,
        cards,
        app_args.limits,
        app_args.auth,
        _limiter(app_args),
        app_args.training,
        _store_models(app_args),
        _training(app_args),
    )
    return app


def build_app(args: dict[str, Any]) -> Application:
    """One application: the ingress and one deployment per model, called over handles."""
    app_args = _args(args)
    cards = _cards(app_args)
    handles = {
        model.name: ImageModelDeployment.options(name=model.name, **MODEL_OPTIONS).bind(  # type: ignore[attr-defined]
            model, app_args.limits, app_args.artifacts
        )
        for model in app_args.models
    }
    return _ingress(app_args, handles, cards)


def build_catalogue(args: dict[str, Any]) -> Application:
    """The catalogue application: every route, calling each model's own application by name."""
    app_args = _args(args)
    if app_args.application is None:
        raise ValueError("build_catalogue needs args.application (deployments.topology sets it)")
    apps = {model.name: model_app_name(app_args.application, model.name) for model in app_args.models}
    return _ingress(app_args, apps, _cards(app_args))


def build_model(args: dict[str, Any]) -> Application:
    """One model's application: its replica is the model and the HTTP ingress of its hot verb."""
    app_args = _args(args)
    if app_args.application is None or len(app_args.models) != 1:
        raise ValueError("build_model needs one model and args.application (deployments.topology sets them)")
    (model,) = app_args.models
    _cards(app_args)  # the weights' name and pin, checked before the replica starts
    deployment = ImageModelIngress.options(name=model.name, **MODEL_OPTIONS)  # type: ignore[attr-defined]
    app: Application = deployment.bind(model, app_args.limits, app_args.artifacts, app_args.auth, app_args.application)
    return app


def build_trained(args: dict[str, Any]) -> Application:
    """One trained model's application (training.one_hop): its replicas hold the stable version and
    answer its `:predict` over HTTP; a canary's share goes on to the catalogue's StoreModels."""
    app_args = _args(args)
    training = app_args.training
    if app_args.application is None or not training.enabled or len(training.one_hop) != 1:
        raise ValueError(
            "build_trained needs training on, one training.one_hop name and args.application "
            "(deployments.topology sets them)"
        )
    from deployments.store_models import TrainedModelIngress

    (name,) = training.one_hop
    deployment = TrainedModelIngress.options(name=name, **STORE_MODELS_OPTIONS)  # type: ignore[attr-defined]
    app: Application = deployment.bind(training, app_args.limits, app_args.auth, app_args.application)
    return app
