"""The app factory: one FastAPI app over a gateway, with the access log and metrics middleware,
the error handlers (every error in the API's JSON shape, with its code), the docs, the
playground, the service routes and the v1 and v2 routes.

The Serve ingress deployment builds one per replica (`__serve_build_asgi_app__`); tests build one
over a gateway of stub models; `reference_app()` is the app over no models, whose OpenAPI
document is the served one."""

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import error_payload
from deployments import openapi, schemas, telemetry
from deployments.args import AuthArgs, LimitsArgs, TrainingArgs
from deployments.errors import InvalidParameters, ServingError, Unavailable
from deployments.gateway import Gateway
from deployments.rest import datasets, rollouts, training, v1, v2
from deployments.rest.common import CREDENTIAL, SERVER_NAME, SERVER_VERSION, request_credential
from deployments.store import Store
from deployments.topology import hot_route

RETRY_AFTER_S = "1"
# The web playground: static files shipped in the package (no CDN: it must work offline).
UI_DIR = Path(__file__).resolve().parent.parent / "ui"

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


class _Observe:
    """Metrics and one structured access-log line for every request (the id comes from Serve).

    Plain ASGI, not Starlette's BaseHTTPMiddleware (`app.middleware("http")`), which runs every
    request's app in a task group with memory streams in between: a cost per request that the
    model's replica, answering HTTP itself, pays on the event loop it batches on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            latency_ms = (time.perf_counter() - started) * 1000.0
            code: str | None = scope.get("state", {}).get("error_code")
            # Label by route template and served model only: raw paths and unknown names would let
            # any client create unbounded metric series.
            template = getattr(scope.get("route"), "path", "unmatched")
            model = scope.get("path_params", {}).get("model", "")
            if code in ("model_not_found", "not_found"):
                model = "unknown"
            quiet = (None, "unauthorized", "forbidden", "rate_limited")
            reason = code if 400 <= status < 500 and code not in quiet else None
            telemetry.ingress_metrics().record(model, template, status, latency_ms, reason)
            telemetry.access_log(
                method=scope["method"],
                path=template,
                model=model,
                status=status,
                latency_ms=round(latency_ms, 2),
                error=code,
            )


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    return _error_response(request, exc.status_code, exc.code, exc.message, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A route's bug: the API's JSON 500 `internal`, whose code tells a client it is this API's answer
    and not a proxy's page for a lost request (which it may send again). Starlette still raises the
    exception afterwards, for the server's log."""
    return _error_response(request, 500, ServingError.code, "internal error")


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error_response(request, 422, InvalidParameters.code, f"{where}: {first.get('msg')}")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(request, exc.status_code, code, str(exc.detail))


def _service_routes(app: FastAPI, gateway: Gateway) -> None:
    """The landing page, this node's metrics and the ingress's liveness."""

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
    async def index() -> HTMLResponse:
        """An HTML page linking the playground (/ui/), these docs, the catalogue and the metrics."""
        return HTMLResponse(LANDING_PAGE)

    @app.get(
        "/metrics",
        # Plain Response: with PlainTextResponse, FastAPI would document the JSON errors as text/plain.
        response_class=Response,
        responses={**openapi.errors(401, 429, 503), 200: openapi.METRICS_RESPONSE},
        summary="Prometheus metrics of this node (Ray, Serve and vision-maas series)",
    )
    async def metrics(key: str | None = CREDENTIAL) -> Response:
        """The Prometheus text format, as scraped from this node's metrics agent."""
        # On a cluster, Prometheus scrapes every node's metrics port; this route shows the
        # ingress's own node, which is every process when running on one machine.
        _, headers = await gateway.authorize(key, None)
        url = await gateway.metrics_url()
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
    async def healthz() -> Response:
        """Answers while the ingress runs, whatever the models' state (Kubernetes' liveness probe)."""
        return JSONResponse({"status": "ok"})


def _errors_and_observation(app: FastAPI) -> None:
    """What every app of the API shares: the access log and metrics, and every error in JSON."""
    app.add_middleware(_Observe)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def lifecycle_routers(gateway: Gateway) -> list[APIRouter]:
    """The data set, training and rollout routes (admin scope): none unless the gateway's training is on."""
    if gateway.training is None:
        return []
    store = Store.at(gateway.training.store)
    return [
        datasets.router(gateway, store, gateway.training.datasets),
        training.router(gateway, gateway.training_jobs),
        rollouts.router(gateway, store),
    ]


def create_app(gateway: Gateway, lifecycle: Sequence[APIRouter] = ()) -> FastAPI:
    """The whole HTTP API over `gateway` (the catalogue application's), with the `lifecycle` routes."""
    app = FastAPI(
        title=SERVER_NAME,
        version=SERVER_VERSION,
        summary="Image models as a service: classification over HTTP, KServe v1-style and Open Inference Protocol v2.",
    )
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True, check_dir=False), name="ui")
    _errors_and_observation(app)
    app.include_router(v1.router(gateway))
    _service_routes(app, gateway)
    app.include_router(v2.router(gateway))
    for router in lifecycle:
        app.include_router(router)
    return app


class _RoutesFromCatalogueRoot:
    """Serve mounts an application at its route prefix (the ASGI root_path); a model's application
    is mounted at its hot verb's exact path. This mounts it back at the catalogue's prefix, so its
    one route keeps the catalogue's template and path parameters (and so its metrics labels)."""

    def __init__(self, app: ASGIApp, hot_path: str) -> None:
        self.app = app
        self.hot_path = hot_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        if root.endswith(self.hot_path):
            scope["root_path"] = root[: -len(self.hot_path)]
        await self.app(scope, receive, send)


class _HotRoute(Route):
    """A model application's one route: the catalogue's path template and handler, without FastAPI's
    parameter solving, which costs about as much as the rest of the app on the replica's event loop
    (`python -m benchmarks.fastpath` measures both routes). Like FastAPI's routes, it puts itself
    in the scope, whose path template labels the metrics and the access log."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


def create_model_app(
    gateway: Gateway,
    verb: str,
    admitted: Callable[[], AbstractContextManager[None]] | None = None,
    model: str | None = None,
) -> FastAPI:
    """The hot verb (`predict` or `generate`) of one model: the catalogue's route, its errors, access
    log and metrics; the catalogue's OpenAPI document covers it. The model is `model`, else the
    gateway's one configured model. `admitted`, the replica's admission, is held from before the
    body is read to the answer."""
    if model is None:
        (model,) = gateway.cards
    path, handler = v1.HOT_ROUTES[verb]

    @asynccontextmanager
    async def admission(request: Request) -> AsyncIterator[None]:
        if admitted is None:
            yield
            return
        try:
            hold = admitted()
            hold.__enter__()
        except ServingError:
            # Refused before parsing anything; the upload is discarded as it arrives (not kept),
            # so the client reads the 503 rather than a connection closed under its upload.
            async for _ in request.stream():
                pass
            raise
        try:
            yield
        finally:
            hold.__exit__(None, None, None)

    async def hot(request: Request) -> Response:
        async with admission(request):
            key = await request_credential(request)
            return await handler(gateway, request.path_params["model"], request, key)

    app = FastAPI(title=SERVER_NAME, version=SERVER_VERSION, openapi_url=None, docs_url=None, redoc_url=None)
    _errors_and_observation(app)
    app.add_middleware(_RoutesFromCatalogueRoot, hot_path=hot_route("/", model, verb))
    app.router.routes.append(_HotRoute(path, hot, methods=["POST"], name=verb))
    return app


def reference_app() -> FastAPI:
    """The app over no models, training enabled: the served routes and OpenAPI document, without Ray."""
    gateway = Gateway({}, {}, LimitsArgs(), AuthArgs(enabled=False), None, TrainingArgs(enabled=True))
    return create_app(gateway, lifecycle_routers(gateway))
