"""A model's own application in-process, without Ray: its replica's HTTP app (the catalogue's hot
route over a gateway that calls the replica itself), mounted as Serve mounts it, and the one
OpenAPI document that covers the routes of every application."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.answers import ClassificationPrediction, PredictResponse
from contract.errors import ERROR_CODE_HEADER
from contract.params import ClassificationParams
from deployments.args import AuthArgs, BatchConfig, LimitsArgs
from deployments.auth import hash_key
from deployments.errors import InvalidImage, Overloaded
from deployments.gateway import Gateway, LocalHandle
from deployments.rest.app import create_model_app, reference_app
from deployments.topology import hot_route
from tests.unit.test_routes import card

KEY = "vmk_" + "c" * 43
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


class Model:
    """The replica's own methods, as the local gateway calls them (no handle, no pickling)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], Any]] = []
        self.fail: Exception | None = None
        self.stall_s = 0.0
        self.cancelled = False

    async def predict(self, items: list[Any], params: Any) -> PredictResponse:
        self.calls.append((items, params))
        if self.stall_s:
            try:
                await asyncio.sleep(self.stall_s)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.fail is not None:
            raise self.fail
        return PredictResponse(
            model="digits_cnn",
            model_version="v1",
            weights="random",
            predictions=[ClassificationPrediction(labels=[]) for _ in items],
        )

    def metadata(self) -> dict[str, Any]:
        raise RuntimeError("a bug")


def mounted(app: Any, route_prefix: str) -> Any:
    """The app as Serve's direct ingress runs it: scope root_path is the application's route prefix."""

    async def at_prefix(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = dict(scope, root_path=scope.get("root_path", "") + route_prefix)
        await app(scope, receive, send)

    return at_prefix


def send(app: Any, method: str, path: str, raise_app_exceptions: bool = True, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def gateway_of(model: Model, auth: AuthArgs | None = None, limits: LimitsArgs | None = None) -> Gateway:
    return Gateway(
        {"digits_cnn": LocalHandle(model)},
        {"digits_cnn": card("digits_cnn", "classification")},
        limits or LimitsArgs(),
        auth or AuthArgs(enabled=False),
        None,
    )


def model_app(
    model: Model, prefix: str = "", auth: AuthArgs | None = None, limits: LimitsArgs | None = None
) -> tuple[Any, str]:
    path = hot_route(prefix or "/", "digits_cnn", "predict")
    return mounted(create_model_app(gateway_of(model, auth, limits), "predict"), path), path


@pytest.mark.parametrize("prefix", ["", "/secured"])
def test_the_hot_route_answers_at_its_exact_path_with_the_catalogues_template(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments import telemetry

    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(telemetry, "access_log", lambda **facts: logged.append(facts))
    model = Model()
    app, path = model_app(model, prefix)
    response = send(app, "POST", path + "?top_k=2", content=PNG, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [{"labels": []}]
    assert model.calls == [([PNG], ClassificationParams(top_k=2))]
    # The access log and the metrics carry the catalogue's route template and the model's name.
    assert logged[-1]["path"] == "/v1/models/{model}:predict"
    assert logged[-1]["model"] == "digits_cnn"


def test_errors_are_the_apis_json_with_their_codes() -> None:
    model = Model()
    app, path = model_app(model)
    bad = send(app, "POST", path, content=b"", headers={"Content-Type": "image/png"})
    assert bad.status_code == 400
    assert bad.headers[ERROR_CODE_HEADER] == bad.json()["error"]["code"]
    model.fail = InvalidImage("not an image")
    invalid = send(app, "POST", path, content=PNG, headers={"Content-Type": "image/png"})
    assert (invalid.status_code, invalid.json()["error"]["code"]) == (400, "invalid_image")
    model.fail = Overloaded("at capacity")
    full = send(app, "POST", path, content=PNG, headers={"Content-Type": "image/png"})
    assert (full.status_code, full.json()["error"]["code"]) == (503, "overloaded")
    assert full.headers["Retry-After"]
    model.fail = RuntimeError("a bug")
    bug = send(app, "POST", path, content=PNG, headers={"Content-Type": "image/png"})
    assert (bug.status_code, bug.json()["error"]["code"]) == (500, "internal")
    wrong_method = send(app, "GET", path)
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")
    below = send(app, "POST", path + "/more", content=PNG)
    assert (below.status_code, below.json()["error"]["code"]) == (404, "not_found")


def test_a_bug_no_handler_maps_is_answered_with_the_apis_json_500() -> None:
    """Not Starlette's plain-text page, which a client could not tell from a proxy's for a lost request."""
    app = create_model_app(gateway_of(Model()), "predict")

    async def boom() -> None:
        raise RuntimeError("a bug no handler maps")

    app.add_api_route("/boom", boom)
    bug = send(app, "GET", "/boom", raise_app_exceptions=False)
    assert (bug.status_code, bug.headers[ERROR_CODE_HEADER], bug.json()["error"]["code"]) == (
        500,
        "internal",
        "internal",
    )
    assert "a bug" not in bug.text


def test_a_stalled_model_times_out_and_its_call_is_cancelled() -> None:
    model = Model()
    model.stall_s = 5.0
    app, path = model_app(model, limits=LimitsArgs(request_timeout_s=0.05))
    response = send(app, "POST", path, content=PNG, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()["error"]["code"]) == (408, "timeout")
    assert model.cancelled


def test_credentials_are_checked_in_the_replica_before_the_body(tmp_path: Path) -> None:
    store = {"tenants": [{"name": "t", "key_sha256": [hash_key(KEY)], "models": ["digits_cnn"]}]}
    (tmp_path / "keys.json").write_text(json.dumps(store))
    model = Model()
    app, path = model_app(model, auth=AuthArgs(enabled=True, keys_file=str(tmp_path / "keys.json")))
    anonymous = send(app, "POST", path, content=PNG, headers={"Content-Type": "image/png"})
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "unauthorized")
    assert model.calls == []
    allowed = send(app, "POST", path, content=PNG, headers={"Content-Type": "image/png", "X-API-Key": KEY})
    assert allowed.status_code == 200


def test_local_handle_maps_a_sync_methods_failure_like_a_remote_one() -> None:
    async def go() -> None:
        handle = LocalHandle(Model())
        with pytest.raises(RuntimeError):
            await handle.metadata.remote()

    asyncio.run(go())


def _documented(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route in an app's OpenAPI document."""
    return {(method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations}


def _served(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route an app answers, whether FastAPI documents it or not."""
    return {(method, route.path) for route in app.routes for method in getattr(route, "methods", None) or ()}


@pytest.mark.parametrize(("task", "verb"), [("classification", "predict"), ("generation", "generate")])
def test_every_applications_routes_are_in_the_one_openapi_document(task: str, verb: str) -> None:
    """The catalogue serves /docs; a model's application must add no route the document lacks."""
    gateway = Gateway({}, {"m": card("m", task)}, LimitsArgs(), AuthArgs(enabled=False), None)
    model_routes = _served(create_model_app(gateway, verb))
    assert model_routes == {("POST", f"/v1/models/{{model}}:{verb}")}
    assert model_routes <= _documented(reference_app())


CREDENTIALS = [
    {},
    {"Authorization": f"Bearer {KEY}"},
    {"Authorization": f"bearer {KEY}"},
    {"X-API-Key": KEY},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong", "X-API-Key": KEY},
    {"Authorization": f"Basic {KEY}", "X-API-Key": KEY},
    {"X-API-Key": ""},
]


@pytest.mark.parametrize("headers", CREDENTIALS, ids=lambda h: " + ".join(f"{k}: {v[:10]}" for k, v in h.items()))
def test_the_hot_route_reads_credentials_as_the_catalogues_route_does(headers: dict[str, str], tmp_path: Path) -> None:
    """The model application's route is not FastAPI's (no parameter solving); the same request
    must get the same answer from it as from the catalogue's :predict."""
    from deployments.rest.app import create_app

    store = {"tenants": [{"name": "t", "key_sha256": [hash_key(KEY)], "models": ["digits_cnn"]}]}
    (tmp_path / "keys.json").write_text(json.dumps(store))
    auth = AuthArgs(enabled=True, keys_file=str(tmp_path / "keys.json"))
    hot, path = model_app(Model(), auth=auth)
    catalogue = create_app(gateway_of(Model(), auth))
    sent = {"content": PNG, "headers": {"Content-Type": "image/png", **headers}}
    mine, theirs = send(hot, "POST", path, **sent), send(catalogue, "POST", path, **sent)
    assert (mine.status_code, mine.json(), mine.headers.get("WWW-Authenticate")) == (
        theirs.status_code,
        theirs.json(),
        theirs.headers.get("WWW-Authenticate"),
    )


def test_admission_limit_is_bounded_below_serves_own() -> None:
    """Serve's limits for models sit above every admission limit, so Serve never answers first."""
    from deployments.app import MODEL_OPTIONS
    from deployments.args import MAX_REQUESTS

    assert BatchConfig().max_requests <= MAX_REQUESTS < MODEL_OPTIONS["max_ongoing_requests"]
    with pytest.raises(ValueError, match="max_requests"):
        BatchConfig(max_requests=MAX_REQUESTS + 1)


def test_a_refused_request_is_answered_before_its_body_is_parsed() -> None:
    """Admission is taken before the body is read: a full replica refuses without parsing the
    upload (it is discarded as it arrives, so the client reads the 503)."""
    import contextlib

    from deployments.rest.app import create_model_app as build

    held: list[int] = []
    received: list[bytes] = []

    @contextlib.contextmanager
    def full() -> Any:
        held.append(1)
        raise Overloaded("at capacity")
        yield  # pragma: no cover

    model = Model()
    gateway = Gateway(
        {"digits_cnn": LocalHandle(model)},
        {"digits_cnn": card("digits_cnn", "classification")},
        LimitsArgs(),
        AuthArgs(enabled=False),
        None,
    )
    path = hot_route("/", "digits_cnn", "predict")
    app = mounted(build(gateway, "predict", full), path)

    async def body() -> Any:
        received.append(PNG)
        yield PNG

    response = send(app, "POST", path, content=body(), headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()["error"]["code"]) == (503, "overloaded")
    assert response.headers["Retry-After"]
    assert held == [1]
    assert model.calls == []
    assert received == [PNG]  # drained, never parsed
