"""The HTTP ingress: routes, request parsing and limits, protocol mapping. No torch here.

No `from __future__ import annotations`: Serve freezes the app with cloudpickle, which keeps only
the globals the code names, and FastAPI resolves string annotations in the replica against those
(`request: Request` became a required query parameter once no route body named `Request`)."""

import asyncio
import base64
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.errors import error_payload
from contract.tasks import IMAGE_TASKS, Task
from deployments import inputs, openapi, schemas, telemetry, v2
from deployments.args import AuthArgs, LimitsArgs
from deployments.auth import KeyStore, Tenant
from deployments.errors import (
    BadRequest,
    Forbidden,
    InvalidParameters,
    ModelNotFound,
    NotAcceptable,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    RouteNotSupported,
    ServingError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    as_serving_error,
)
from deployments.schemas import ModelCard
from models.images import ImageError, ImageLimits, decode_image

logger = logging.getLogger("ray.serve")

SERVER_NAME = "vision-maas"
SERVER_VERSION = importlib.metadata.version(SERVER_NAME)  # pyproject.toml's, as installed
RETRY_AFTER_S = "1"
# The statuses of the routes that take images or tensors (:predict, :explain, /v2 infer).
INFER_ERRORS = (400, 401, 403, 404, 408, 413, 415, 422, 429, 503)
# Each shared by a /v2 route and its /versions/{version} twin.
V2_MODEL_RESPONSES = openapi.v2_errors(401, 403, 404, 429, 503)
V2_INFER_RESPONSES = {**openapi.v2_errors(*INFER_ERRORS), 200: openapi.V2_BINARY_INFER_RESPONSE}

app = FastAPI(
    title="vision-maas",
    version=SERVER_VERSION,
    summary="Image models as a service: classification over HTTP, KServe v1-style and Open Inference Protocol v2.",
)


UI_DIR = Path(__file__).resolve().parent / "ui"
# The web playground: static files shipped in the package (no CDN: it must work offline).
app.mount("/ui", StaticFiles(directory=UI_DIR, html=True, check_dir=False), name="ui")

LANDING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vision-maas</title></head>
<body><h1>vision-maas</h1><p>Image models as a service.</p>
<ul><li><a href="/ui/">Playground</a></li><li><a href="/docs">API documentation</a></li>
<li><a href="/v1/models">Models</a></li><li><a href="/metrics">Metrics</a></li></ul></body></html>
"""


def _error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body, coded = error_payload(request.url.path, code, message)
    request.state.error_code = code  # for the request's metrics and access log
    headers = dict(headers or {}) | coded
    if status in (429, 503):
        headers.setdefault("Retry-After", RETRY_AFTER_S)
    return JSONResponse(body, status_code=status, headers=headers)


@app.middleware("http")
async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Metrics and one structured access-log line for every request (the id comes from Serve)."""
    started = time.perf_counter()
    response = await call_next(request)
    latency_ms = (time.perf_counter() - started) * 1000.0
    code: str | None = getattr(request.state, "error_code", None)
    route = request.scope.get("route")
    # Label by route template and served model only: raw paths and unknown names would let
    # any client create unbounded metric series.
    template = getattr(route, "path", "unmatched")
    model = request.scope.get("path_params", {}).get("model", "")
    if code in ("model_not_found", "not_found"):
        model = "unknown"
    status = response.status_code
    reason = code if 400 <= status < 500 and code not in (None, "unauthorized", "forbidden", "rate_limited") else None
    telemetry.ingress_metrics().record(model, template, status, latency_ms, reason)
    telemetry.access_log(
        method=request.method,
        path=template,
        model=model,
        status=status,
        latency_ms=round(latency_ms, 2),
        error=code,
    )
    return response


@app.exception_handler(ServingError)
async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return _error_response(request, exc.status_code, exc.code, exc.message, exc.headers)


_BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, as a header.")


def credential(
    bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
    api_key: str | None = Security(_API_KEY),
) -> str | None:
    """The API key of the request, from Authorization: Bearer or X-API-Key."""
    return bearer.credentials if bearer is not None else api_key


# A plain default rather than Annotated: Serve's class-based ingress rebuilds method
# signatures and keeps `= Depends(...)` defaults, but drops Annotated metadata.
CREDENTIAL = Depends(credential)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error_response(request, 422, InvalidParameters.code, f"{where}: {first.get('msg')}")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(request, exc.status_code, code, str(exc.detail))


def _triton_type(datatype: str) -> str:
    """Triton model-config type of an Open Inference Protocol datatype (BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _node_metrics_url() -> str:
    """The metrics endpoint of the Ray node this process runs on."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node.get("NodeID") == node_id:
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    raise Unavailable("this node's metrics endpoint is unknown")


def _awaitable(response: Any) -> Awaitable[Any]:
    """A DeploymentResponse as a coroutine, so asyncio.wait_for can bound it."""

    async def wait() -> Any:
        return await response

    return wait()


@serve.deployment  # options: deployments.app.INGRESS_OPTIONS
@serve.ingress(app)
class Ingress:
    """Parses and limits requests, then calls the model deployment named in the URL."""

    def __init__(
        self,
        models: dict[str, DeploymentHandle[Any]],
        cards: dict[str, ModelCard],
        limits: LimitsArgs,
        auth: AuthArgs,
        limiter: DeploymentHandle[Any] | None,
    ) -> None:
        self._models = models
        self._cards = cards
        self._limits = limits
        self._limiter = limiter
        self._metrics_url: str | None = None
        # Keys are read here, in the replica, from a file or the environment: they never
        # travel through Ray's object store.
        self._keys = KeyStore.load(auth.keys_file, auth.keys_env) if auth.enabled else None
        if self._keys is None:
            logger.warning("API key authentication is OFF (auth.enabled: false): every caller may use every model")

    async def _authorize(self, key: str | None, model: str | None) -> tuple[Tenant | None, dict[str, str]]:
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
        if self._limiter is None or (tenant.rate_limit is None and tenant.quota is None):
            return tenant, {}
        try:
            decision = await self._limiter.acquire.remote(tenant.name, tenant.rate_limit, tenant.quota)
        except Exception:
            logger.exception("rate limiter unavailable")
            raise Overloaded("rate limiting is unavailable; retry later") from None
        if not decision.allowed:
            raise TooManyRequests(f"tenant {tenant.name!r} is over its rate limit or quota", headers=decision.headers())
        return tenant, decision.headers()

    async def _gate(self, model: str, key: str | None, version: str | None = None) -> tuple[ModelCard, dict[str, str]]:
        """The first steps of every model route, in one order: the model (and version) must be
        served, then the key must allow it (and the tenant's rate limit). Only then may a route
        read the body, parse its parameters and call the model."""
        card = self._v2_card(model, version)
        _, headers = await self._authorize(key, model)
        return card, headers

    # ---- plumbing -------------------------------------------------------------------

    def _card(self, model: str) -> ModelCard:
        try:
            return self._cards[model]
        except KeyError:
            raise ModelNotFound(f"model {model!r} is not served; see GET /v1/models") from None

    async def _call(self, model: str, method: str, *args: Any) -> Any:
        """Call a model deployment method, mapping timeouts, backpressure and domain errors."""
        response = getattr(self._models[model], method).remote(*args)
        try:
            return await asyncio.wait_for(_awaitable(response), self._limits.request_timeout_s)
        except TimeoutError:
            response.cancel()
            raise RequestTimeout(f"model {model!r} did not answer within {self._limits.request_timeout_s}s") from None
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

    def _decode_shared(self, data: bytes) -> np.ndarray:
        limits = ImageLimits(max_bytes=self._limits.max_image_bytes, max_pixels=self._limits.max_image_pixels)
        return np.asarray(decode_image(data, "RGB", limits))

    async def _annotate_one(self, req: schemas.AnnotateRequest, tenant: Tenant | None) -> dict[str, Any]:
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
            card = self._card(feature.model)
            if tenant is not None and not tenant.may_use(feature.model):
                raise Forbidden(f"this API key may not use model {feature.model!r}")
            if card.task not in IMAGE_TASKS:
                raise RouteNotSupported(f"model {feature.model!r} ({card.task}) does not annotate still images")
            params = inputs.validate(schemas.PARAMS_BY_TASK[card.task], feature.parameters)
            # The ObjectRef is a top-level argument, so Ray hands the replica the array itself.
            result = await self._call(feature.model, "predict_decoded", image, params.model_dump())
        except ServingError as exc:
            return {"model": feature.model, "error": {"code": exc.code, "message": exc.message}}
        return {"model": feature.model, "model_version": result["model_version"], "result": result["predictions"][0]}

    # ---- v1 -------------------------------------------------------------------------

    @app.post(
        "/v1/models/{model}:predict",
        response_model=schemas.PredictResponse,
        responses=openapi.errors(*INFER_ERRORS),
        openapi_extra=openapi.PREDICT_OPENAPI,
        summary="Predict on one or more images",
    )
    async def predict(self, model: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        """Images as a raw body, multipart `image` parts or JSON `instances`; parameters in the query, form or JSON."""
        card, headers = await self._gate(model, key)
        if card.task not in schemas.PARAMS_BY_TASK:
            raise RouteNotSupported(f"model {model!r} ({card.task}) has no :predict route; see its task's route")
        video = card.task == Task.VIDEO_CLASSIFICATION
        items, raw_params = await inputs.inputs_and_params(request, self._limits, video=video)
        params = inputs.validate(schemas.PARAMS_BY_TASK[card.task], raw_params)
        if video:
            result = await self._call(model, "predict_clips", items, params.model_dump())
        else:
            result = await self._call(model, "predict", items, params.model_dump())
        return JSONResponse(result, headers=headers)

    @app.post(
        "/v1/models/{model}:generate",
        response_model=schemas.GenerateResponse,
        responses={
            **openapi.errors(400, 401, 403, 404, 406, 408, 413, 422, 429, 503),
            200: openapi.GENERATED_PNG_RESPONSE,
        },
        openapi_extra=openapi.json_request_body(schemas.GenerateBody),
        summary="Generate images (generative models)",
    )
    async def generate(self, model: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        """Base64 PNGs in JSON, or one PNG itself with `Accept: image/png`; the same seed gives the same images."""
        card, headers = await self._gate(model, key)
        if card.task != Task.GENERATION:
            raise RouteNotSupported(f"model {model!r} ({card.task}) does not generate images; see :predict")
        body = await inputs.json_body(request, self._limits, schemas.GenerateBody)
        if body.num_images > self._limits.max_images_per_request:
            raise PayloadTooLarge(
                f"num_images {body.num_images} is over the limit of {self._limits.max_images_per_request}"
            )
        want_png = inputs.accepts_png_only(request.headers.get("accept", ""))
        if want_png and body.num_images != 1:
            raise NotAcceptable("Accept: image/png returns one image; ask for num_images 1 or accept application/json")
        result = await self._call(model, "generate", body.num_images, body.seed, body.for_model())
        if want_png:
            image = result["images"][0]
            headers |= {
                "X-Seed": str(result["seed"]),
                "X-Label": image["label"],
                "X-Model-Version": result["model_version"],
            }
            return Response(base64.b64decode(image["image"]), media_type="image/png", headers=headers)
        return JSONResponse(result, headers=headers)

    @app.post(
        "/v1/models/{model}:explain",
        response_model=schemas.ExplainResponse,
        responses=openapi.errors(*INFER_ERRORS),
        openapi_extra=openapi.EXPLAIN_OPENAPI,
        summary="Explanation maps of a classifier's decision (Grad-CAM, attention rollout)",
    )
    async def explain(self, model: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        """Images sent as to :predict; a heatmap and an overlay per image, for the top label or `target`."""
        card, headers = await self._gate(model, key)
        if not card.explainable:
            raise RouteNotSupported(f"model {model!r} ({card.task}) has no :explain route; classifiers do")
        images, raw_params = await inputs.images_and_params(request, self._limits)
        params = inputs.validate(schemas.ExplainParams, raw_params)
        result = await self._call(model, "explain", images, params.for_model())
        return JSONResponse(result, headers=headers)

    @app.post(
        "/v1/images:annotate",
        response_model=schemas.AnnotateResponse,
        responses=openapi.errors(400, 401, 413, 422, 429, 503),
        openapi_extra=openapi.json_request_body(schemas.AnnotateBody),
        summary="Several models on each of several images; errors reported per feature",
    )
    async def annotate(self, request: Request, key: str | None = CREDENTIAL) -> Response:
        """Each image is decoded once and shared by its models; an unknown or refused model fails only its feature."""
        tenant, headers = await self._authorize(key, None)
        body = await inputs.json_body(request, self._limits, schemas.AnnotateBody)
        if len(body.requests) > self._limits.max_annotate_images:
            raise PayloadTooLarge(
                f"{len(body.requests)} images in one request; the limit is {self._limits.max_annotate_images}"
            )
        # Every image is decoded once, here, and shared with its models through the object
        # store as one uint8 array: compact, and no model decodes it again.
        responses = await asyncio.gather(*(self._annotate_one(req, tenant) for req in body.requests))
        return JSONResponse({"responses": list(responses)}, headers=headers)

    @app.get(
        "/v1/models",
        response_model=schemas.ModelList,
        responses=openapi.errors(401, 408, 429, 503),
        summary="The served models",
    )
    async def list_models(self, key: str | None = CREDENTIAL) -> Response:
        """Every model the caller's API key may use, read live from its replicas."""
        tenant, headers = await self._authorize(key, None)
        names = [name for name in self._cards if tenant is None or tenant.may_use(name)]
        entries = await asyncio.gather(*(self._call(name, "metadata") for name in names))
        return JSONResponse({"models": list(entries)}, headers=headers)

    @app.get(
        "/v1/models/{model}",
        response_model=schemas.ModelMetadata,
        responses=openapi.errors(401, 403, 404, 408, 429, 503),
        summary="One model: task, input, labels, weights, batching",
    )
    async def get_model(self, model: str, key: str | None = CREDENTIAL) -> Response:
        """The model's catalogue entry, read live from a replica."""
        _, headers = await self._gate(model, key)
        return JSONResponse(await self._call(model, "metadata"), headers=headers)

    @app.get(
        "/",
        response_class=Response,  # as /metrics: errors are JSON, whatever this route's own media type
        responses={
            **openapi.errors(),
            200: {
                "description": "HTML",
                "content": {"text/html": {"schema": {"type": "string"}, "example": LANDING_PAGE}},
            },
        },
        summary="Landing page: links to the playground, docs and catalogue",
    )
    async def index(self) -> HTMLResponse:
        """An HTML page linking the playground (/ui/), these docs, the catalogue and the metrics."""
        return HTMLResponse(LANDING_PAGE)

    @app.get(
        "/metrics",
        # Plain Response: with PlainTextResponse, FastAPI would document the JSON errors as text/plain.
        response_class=Response,
        responses={**openapi.errors(401, 429, 503), 200: openapi.METRICS_RESPONSE},
        summary="Prometheus metrics of this node (Ray, Serve and vision-maas series)",
    )
    async def metrics(self, key: str | None = CREDENTIAL) -> Response:
        """The Prometheus text format, as scraped from this node's metrics agent."""
        # On a cluster, Prometheus scrapes every node's metrics port; this route shows the
        # ingress's own node, which is every process when running on one machine.
        _, headers = await self._authorize(key, None)
        if self._metrics_url is None:
            self._metrics_url = await asyncio.to_thread(_node_metrics_url)
        url = self._metrics_url
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                scraped = await http.get(url)
        except httpx.HTTPError:
            raise Unavailable("the node's metrics agent is not answering; retry later") from None
        content_type = scraped.headers.get("content-type", "text/plain; version=0.0.4")
        return Response(scraped.content, media_type=content_type, headers=headers)

    @app.get(
        "/healthz", response_model=schemas.HealthStatus, responses=openapi.errors(), summary="Liveness of the ingress"
    )
    async def healthz(self) -> Response:
        """Answers while the ingress runs, whatever the models' state (Kubernetes' liveness probe)."""
        return JSONResponse({"status": "ok"})

    # ---- Open Inference Protocol v2 ---------------------------------------------------

    @app.get("/v2", response_model=v2.V2ServerMetadata, responses=openapi.v2_errors(), summary="v2 server metadata")
    async def v2_server(self) -> Response:
        """Server name, version and the protocol extensions it supports."""
        return JSONResponse(
            {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data", "classification"]}
        )

    @app.get(
        "/v2/health/live",
        response_model=v2.V2ServerLive,
        responses=openapi.v2_errors(),
        summary="v2 server liveness",
    )
    async def v2_live(self) -> Response:
        """Live while the ingress runs."""
        return JSONResponse({"live": True})

    @app.get(
        "/v2/health/ready",
        response_model=v2.V2ServerReady,
        responses={**openapi.v2_errors(), 503: openapi.not_ready_response(v2.V2ServerReady)},
        summary="v2 server readiness: every model answers",
    )
    async def v2_ready(self) -> Response:
        """Ready when every model answers within 5 s; 503 with `ready: false` otherwise."""
        ready = await asyncio.gather(*(self._model_ready(name) for name in self._cards))
        return JSONResponse({"ready": all(ready)}, status_code=200 if all(ready) else 503)

    async def _model_ready(self, model: str) -> bool:
        try:
            return bool(await asyncio.wait_for(_awaitable(self._models[model].ready.remote()), 5.0))
        except Exception:
            return False

    def _v2_card(self, model: str, version: str | None) -> ModelCard:
        card = self._card(model)
        if version is not None and version != card.version:
            raise ModelNotFound(f"model {model!r} has no version {version!r}; it serves {card.version!r}")
        return card

    @app.get(
        "/v2/models/{model}",
        response_model=v2.V2ModelMetadata,
        responses=V2_MODEL_RESPONSES,
        summary="v2 model metadata",
    )
    @app.get(
        "/v2/models/{model}/versions/{version}",
        response_model=v2.V2ModelMetadata,
        responses=V2_MODEL_RESPONSES,
        summary="v2 model metadata of a version",
    )
    async def v2_model(self, model: str, version: str | None = None, key: str | None = CREDENTIAL) -> Response:
        """The model's versions and tensors: a request sends any one of its inputs."""
        card, _ = await self._gate(model, key, version)
        return JSONResponse(
            {
                "name": card.name,
                "versions": [card.version],
                "platform": "pytorch",
                "inputs": [i.model_dump() for i in card.inputs],
                "outputs": [o.model_dump() for o in card.outputs],
            }
        )

    @app.get(
        "/v2/models/{model}/ready",
        response_model=v2.V2ModelReady,
        responses=openapi.V2_MODEL_READY_RESPONSES,
        summary="v2 model readiness",
    )
    @app.get(
        "/v2/models/{model}/versions/{version}/ready",
        response_model=v2.V2ModelReady,
        responses=openapi.V2_MODEL_READY_RESPONSES,
        summary="v2 model readiness of a version",
    )
    async def v2_model_ready(self, model: str, version: str | None = None, key: str | None = CREDENTIAL) -> Response:
        """Ready when the model answers within 5 s; 503 with `ready: false` otherwise."""
        card, _ = await self._gate(model, key, version)
        ready = await self._model_ready(card.name)
        return JSONResponse({"name": card.name, "ready": ready}, status_code=200 if ready else 503)

    @app.get(
        "/v2/models/{model}/config",
        response_model=v2.V2ModelConfig,
        responses=openapi.v2_errors(401, 403, 404, 408, 429, 503),
        summary="Triton model configuration",
    )
    async def v2_model_config(self, model: str, key: str | None = CREDENTIAL) -> Response:
        """Triton's model configuration (batch size read live from a replica), for tritonclient and perf_analyzer."""
        card, _ = await self._gate(model, key)
        meta = await self._call(model, "metadata")
        return JSONResponse(
            {
                "name": card.name,
                "platform": "pytorch",
                "max_batch_size": meta["batching"]["max_batch_size"],
                "input": [
                    {"name": i.name, "data_type": _triton_type(i.datatype), "dims": list(i.shape[1:]) or [1]}
                    for i in card.inputs
                ],
                "output": [
                    {"name": o.name, "data_type": f"TYPE_{o.datatype}", "dims": list(o.shape[1:])} for o in card.outputs
                ],
            }
        )

    @app.get(
        "/v2/models/{model}/stats",
        response_model=v2.V2ModelStats,
        responses=openapi.v2_errors(401, 403, 404, 408, 429, 503),
        summary="Triton statistics of the replica that answers",
    )
    async def v2_model_stats(self, model: str, key: str | None = CREDENTIAL) -> Response:
        """Inputs and batches executed by the replica that answers, by batch size."""
        card, _ = await self._gate(model, key)
        stats = await self._call(model, "stats")
        return JSONResponse({"model_stats": [{"name": card.name, "version": card.version, **stats}]})

    @app.post(
        "/v2/models/{model}/infer",
        response_model=v2.V2InferResponse,
        responses=V2_INFER_RESPONSES,
        openapi_extra=openapi.V2_INFER_REQUEST_BODY,
        summary="v2 inference (JSON or binary tensor data)",
    )
    @app.post(
        "/v2/models/{model}/versions/{version}/infer",
        response_model=v2.V2InferResponse,
        responses=V2_INFER_RESPONSES,
        openapi_extra=openapi.V2_INFER_REQUEST_BODY,
        summary="v2 inference on a version",
    )
    async def v2_infer(
        self, model: str, request: Request, version: str | None = None, key: str | None = CREDENTIAL
    ) -> Response:
        """Inputs as JSON tensors or binary tensor data; outputs likewise, or top-k `classification` strings."""
        card, auth_headers = await self._gate(model, key, version)
        body = await inputs.read_body(request, self._limits.max_body_bytes)
        infer_request, binary = v2.split_body(body, request.headers.get(v2.HEADER_LENGTH))
        tensors = v2.decode_inputs(infer_request, binary)
        accepted = {i.name: i.datatype for i in card.inputs}
        unknown = set(tensors) - set(accepted)
        given = set(tensors) - {v2.LABEL_INPUT}  # a generator's labels go with its seeds
        if unknown or len(given) != 1:
            raise BadRequest(
                f"send exactly one of the inputs {', '.join(repr(n) for n in accepted if n != v2.LABEL_INPUT)}"
                f" (see GET /v2/models/{card.name}); got {', '.join(sorted(tensors)) or 'none'}"
            )
        count = 0
        for name, value in tensors.items():
            kind = accepted[name]
            if kind == "BYTES" and not isinstance(value, list):
                raise BadRequest(f"input {name!r} must be BYTES")
            if kind != "BYTES" and not (
                isinstance(value, np.ndarray) and value.dtype.kind == ("f" if kind == "FP32" else "i")
            ):
                raise BadRequest(f"input {name!r} must be {kind}")
            if name in given:
                count = len(value)
        if count == 0:
            raise BadRequest("the input is empty")
        if count > self._limits.max_images_per_request:
            raise PayloadTooLarge(f"{count} items in one request; the limit is {self._limits.max_images_per_request}")
        outputs = await self._call(model, "infer", tensors)
        content, headers = v2.encode_response(card.name, card.version, infer_request, outputs, card.labels)
        return Response(content=content, headers=headers | auth_headers)
