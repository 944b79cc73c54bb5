"""The gateway every route goes through: the served models and their cards, the caller's key and
limits, and the call to a model deployment with its failures mapped to the error table.

Ray-aware (deployment handles, the object store) but free of HTTP: the route modules of
deployments.rest hold the HTTP side, and the Serve ingress deployment is this class with an app."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from contract.answers import PredictResponse
from contract.tasks import IMAGE_TASKS
from deployments import inputs, schemas
from deployments.args import AuthArgs, LimitsArgs, TrainingArgs
from deployments.auth import KeyStore, Tenant
from deployments.errors import (
    Forbidden,
    ModelNotFound,
    Overloaded,
    RequestTimeout,
    RouteNotSupported,
    ServingError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    as_serving_error,
)
from deployments.leases import LeaseCache
from deployments.rollouts import TrainedModels
from deployments.schemas import ModelCard
from deployments.store import Store
from models.images import ImageError, ImageLimits, decode_image

logger = logging.getLogger("ray.serve")

# How long a readiness probe waits for a model's answer.
READY_TIMEOUT_S = 5.0


def _awaitable(response: Any) -> Awaitable[Any]:
    """A DeploymentResponse as a coroutine, so asyncio.wait_for can bound it."""

    async def wait() -> Any:
        return await response

    return wait()


def _node_metrics_url() -> str:
    """The metrics endpoint of the Ray node this process runs on."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node.get("NodeID") == node_id:
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    raise Unavailable("this node's metrics endpoint is unknown")


class LocalHandle:
    """An object's methods called as a deployment handle's are, `.method.remote(*args)`, giving a
    future that can be awaited and cancelled: the model replica's own gateway calls its model so,
    in-process, with the same error mapping and timeout as a call to another replica."""

    def __init__(self, target: object) -> None:
        self._target = target

    def __getattr__(self, method: str) -> _LocalMethod:
        return _LocalMethod(getattr(self._target, method))


class _LocalMethod:
    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    def remote(self, *args: Any) -> asyncio.Task[Any]:
        async def call() -> Any:
            result = self._function(*args)
            return await result if inspect.isawaitable(result) else result

        return asyncio.ensure_future(call())


class Gateway:
    """The served models, the key store and the limits; the steps every route shares."""

    def __init__(
        self,
        models: Mapping[str, DeploymentHandle[Any] | LocalHandle | str],
        cards: dict[str, ModelCard],
        limits: LimitsArgs,
        auth: AuthArgs,
        limiter: DeploymentHandle[Any] | None,
        training: TrainingArgs | None = None,
        store_models: Any = None,
        training_jobs: Any = None,
    ) -> None:
        # A model is a handle (to a deployment of this application, or this replica's LocalHandle),
        # or the name of the model's own application (deployments.topology), resolved here, in the
        # replica: its deployment has the model's name.
        self.models = {
            name: serve.get_deployment_handle(name, app_name=model) if isinstance(model, str) else model
            for name, model in models.items()
        }
        self.cards = cards
        # Training, when on: its routes, and the model store's trained models (deployments.rollouts)
        # served by name beside the configured ones, each :predict by the version its rollout picks.
        self.training = training if training is not None and training.enabled else None
        # The TrainingJobs deployment (deployments.training), when this application runs one.
        self.training_jobs = training_jobs if self.training is not None else None
        self.trained: TrainedModels | None = None
        if self.training is not None and store_models is not None:
            self.trained = TrainedModels(Store.at(self.training.store), store_models)
        self.limits = limits
        self._limiter = limiter
        # Rate limits and quotas are counted by the limiter, leased a few requests at a time.
        self._leases = None if self._limiter is None else LeaseCache.over(self._limiter)
        self._metrics_url: str | None = None
        # Keys are read here, in the replica, from a file or the environment: they never
        # travel through Ray's object store.
        self._keys = KeyStore.load(auth.keys_file, auth.keys_env) if auth.enabled else None
        if self._keys is None and models:
            logger.warning("API key authentication is OFF (auth.enabled: false): every caller may use every model")

    async def gate(self, model: str, key: str | None, version: str | None = None) -> tuple[ModelCard, dict[str, str]]:
        """The first steps of every model route, in one order: the model (and version) must be
        served, then the key must allow it (and the tenant's rate limit). Only then may a route
        read the body, parse its parameters and call the model."""
        if model not in self.cards and self.trained is not None:
            card = await self.trained.card(model, version, lambda: self.call(model, "card"))
        else:
            card = self.card(model, version)
        _, headers = await self.authorize(key, model)
        return card, headers

    async def authorize(self, key: str | None, model: str | None) -> tuple[Tenant | None, dict[str, str]]:
        """The caller's tenant and X-RateLimit-* headers; 401, 403 or 429 when refused."""
        if self._keys is None:
            return None, {}
        if not key:
            raise Unauthorized(
                "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>",
                headers={"WWW-Authenticate": 'Bearer realm="vision-maas"'},
            )
        tenant = self._keys.authenticate(key)
        if tenant is None:
            raise Unauthorized(
                "the API key is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="vision-maas", error="invalid_token"'},
            )
        if model is not None and not tenant.may_use(model):
            raise Forbidden(f"this API key may not use model {model!r}")
        if self._leases is None or (tenant.rate_limit is None and tenant.quota is None):
            return tenant, {}
        # Admitted from this gateway's leased requests; 503 Overloaded when the limiter is unreachable.
        decision = await self._leases.admit(tenant)
        if not decision.allowed:
            raise TooManyRequests(f"tenant {tenant.name!r} is over its rate limit or quota", headers=decision.headers())
        return tenant, decision.headers()

    async def authorize_admin(self, key: str | None) -> tuple[Tenant | None, dict[str, str]]:
        """The caller of a data set, training or rollout route: 403 unless its tenant has the admin
        scope (with API keys off, everyone has it)."""
        tenant, headers = await self.authorize(key, None)
        if tenant is not None and not tenant.admin:
            raise Forbidden("this API key has no admin scope: data sets, training and rollouts need it")
        return tenant, headers

    def card(self, model: str, version: str | None = None) -> ModelCard:
        """The served model's card (404 when the model, or the version asked for, is not served)."""
        try:
            card = self.cards[model]
        except KeyError:
            raise ModelNotFound(f"model {model!r} is not served; see GET /v1/models") from None
        if version is not None and version != card.version:
            raise ModelNotFound(f"model {model!r} has no version {version!r}; it serves {card.version!r}")
        return card

    async def call(self, model: str, method: str, *args: Any) -> Any:
        """Call a model deployment method, mapping timeouts, backpressure and domain errors."""
        response = getattr(self._handle(model), method).remote(*args)
        try:
            return await asyncio.wait_for(_awaitable(response), self.limits.request_timeout_s)
        except TimeoutError:
            response.cancel()
            raise RequestTimeout(f"model {model!r} did not answer within {self.limits.request_timeout_s}s") from None
        except BackPressureError:
            raise Overloaded(f"model {model!r} is at capacity; retry later") from None
        except (RayActorError, ActorUnavailableError):
            # The replica died mid-request (killed, OOM, node lost); Serve is replacing it.
            logger.warning("model %s: replica unavailable during %s", model, method)
            raise Unavailable(f"model {model!r} is restarting; retry later") from None
        except Exception as exc:
            error = as_serving_error(exc)
            if error is None:
                logger.exception("model %s: %s failed", model, method)
                raise ServingError("internal error") from None
            raise error from None

    def _handle(self, model: str) -> Any:
        """What reaches the model: its deployment, or for a trained model the replica holding the
        version this request was routed to."""
        handle = self.models.get(model)
        if handle is None and self.trained is not None:
            return self.trained.routed(model)
        if handle is None:
            raise ModelNotFound(f"model {model!r} is not served; see GET /v1/models")
        return handle

    async def model_ready(self, model: str) -> bool:
        """Whether the model answers its readiness call within READY_TIMEOUT_S."""
        try:
            return bool(await asyncio.wait_for(_awaitable(self._handle(model).ready.remote()), READY_TIMEOUT_S))
        except Exception:
            return False

    async def metrics_url(self) -> str:
        """This node's metrics endpoint, looked up once."""
        if self._metrics_url is None:
            self._metrics_url = await asyncio.to_thread(_node_metrics_url)
        return self._metrics_url

    # ---- /v1/images:annotate -------------------------------------------------------------

    def _decode_shared(self, data: bytes) -> np.ndarray:
        limits = ImageLimits(max_bytes=self.limits.max_image_bytes, max_pixels=self.limits.max_image_pixels)
        return np.asarray(decode_image(data, "RGB", limits))

    async def annotate_one(self, req: schemas.AnnotateRequest, tenant: Tenant | None) -> dict[str, Any]:
        """One image of an annotate request: decoded once, then every feature concurrently."""
        try:
            data = inputs.b64(req.image.b64, 0)
            # Off the event loop: other requests keep flowing while a large image decodes.
            array = await asyncio.to_thread(self._decode_shared, data)
        except (ServingError, ImageError) as exc:
            error = as_serving_error(exc) or ServingError("internal error")
            return {"features": [], "error": {"code": error.code, "message": error.message}}
        shared = ray.put(array)  # one copy in the object store, read zero-copy by every model
        results = await asyncio.gather(*(self._annotate_feature(shared, f, tenant) for f in req.features))
        return {"features": list(results)}

    async def _annotate_feature(
        self, image: ray.ObjectRef[np.ndarray], feature: schemas.Feature, tenant: Tenant | None
    ) -> dict[str, Any]:
        try:
            card = self.card(feature.model)
            if tenant is not None and not tenant.may_use(feature.model):
                raise Forbidden(f"this API key may not use model {feature.model!r}")
            if card.task not in IMAGE_TASKS:
                raise RouteNotSupported(f"model {feature.model!r} ({card.task}) does not annotate still images")
            params = inputs.validate(schemas.PARAMS_BY_TASK[card.task], feature.parameters)
            # The ObjectRef is a top-level argument, so Ray hands the replica the array itself.
            result: PredictResponse = await self.call(feature.model, "predict_decoded", image, params)
        except ServingError as exc:
            return {"model": feature.model, "error": {"code": exc.code, "message": exc.message}}
        prediction = result.predictions[0].model_dump(mode="json", exclude_none=True)
        return {"model": feature.model, "model_version": result.model_version, "result": prediction}
