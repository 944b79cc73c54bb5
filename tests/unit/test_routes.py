"""The HTTP routes in-process, without Ray: the real ingress class and FastAPI app, with stub model
deployments that answer, fail or stall as asked. Every status of the error table, the order of
the checks, and the input forms, in the fast tier."""

from __future__ import annotations

import asyncio
import base64
import json
import types
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from contract.answers import ClassificationPrediction, GenerateResponse, PredictResponse
from contract.errors import ERROR_CODE_HEADER
from contract.params import ClassificationParams
from deployments.args import AuthArgs, LimitsArgs, TrainingArgs
from deployments.auth import Lease, hash_key
from deployments.errors import InvalidImage
from deployments.gateway import Gateway
from deployments.ingress import Ingress
from deployments.rest.app import create_app, reference_app
from deployments.schemas import ModelCard

KEY, OTHER_KEY = "vmk_" + "a" * 43, "vmk_" + "b" * 43
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


class Method:
    """A deployment handle's method: `.remote(...)` gives an awaitable, as a DeploymentResponse is."""

    def __init__(self, stub: StubModel, name: str) -> None:
        self.stub, self.name = stub, name

    def remote(self, *args: Any) -> Response:
        self.stub.calls.append((self.name, args))
        return Response(self.stub, self.stub.behaviour(self.name, args))


class Response:
    """A DeploymentResponse: awaitable, and cancellable."""

    def __init__(self, stub: StubModel, answer: Coroutine[Any, Any, Any]) -> None:
        self.stub, self.task = stub, asyncio.ensure_future(answer)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.task.__await__()

    def cancel(self) -> None:
        self.stub.cancelled += 1
        self.task.cancel()


class StubModel:
    """A model deployment's handle whose answers the test decides."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: BaseException | None = None
        self.stall_s = 0.0
        self.cancelled = 0

    async def behaviour(self, method: str, args: tuple[Any, ...]) -> Any:
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if self.fail is not None:
            raise self.fail
        if method == "ready":
            return True
        envelope = {"model": "stub", "model_version": "v1", "weights": "random"}
        if method == "generate":
            return GenerateResponse(**envelope, seed=1, images=[])
        return PredictResponse(**envelope, predictions=[ClassificationPrediction(labels=[]) for _ in args[0]])

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return Method(self, name)


def card(name: str, task: str) -> ModelCard:
    return ModelCard(
        name=name,
        task=task,
        version="v1",
        labels=[str(i) for i in range(10)],
        input_shape=[1, 28, 28],
        inputs=[],
        outputs=[],
        explainable=task == "classification",
    )


class Limiter:
    """The RateLimiter deployment's handle, refusing every lease."""

    def __init__(self) -> None:
        self.lease = types.SimpleNamespace(remote=self._lease)
        self.give_back = types.SimpleNamespace(remote=self._give_back)

    async def _lease(self, *args: Any) -> Lease:
        return Lease(granted=0, ttl_s=2.0, window=0, limit=2, remaining=0, reset_s=60, wait_s=60.0)

    async def _give_back(self, *args: Any) -> None:
        raise AssertionError("nothing was leased, so nothing is given back")


Call = Callable[..., httpx.Response]


def routes(
    stub: StubModel,
    tmp_path: Path | None = None,
    limits: LimitsArgs | None = None,
    limited: bool = False,
) -> Call:
    """A request function against the in-process ingress serving `digits_cnn` (a classifier) and
    `digits_dcgan` (a generator), both answered by `stub`; with `tmp_path`, API keys on."""
    auth = AuthArgs(enabled=False)
    if tmp_path is not None:
        store = {
            "tenants": [
                {
                    "name": "all",
                    "key_sha256": [hash_key(KEY)],
                    **({"rate_limit": {"requests_per_second": 1, "burst": 1}} if limited else {}),
                },
                {"name": "gen", "key_sha256": [hash_key(OTHER_KEY)], "models": ["digits_dcgan"]},
            ]
        }
        (tmp_path / "keys.json").write_text(json.dumps(store))
        auth = AuthArgs(enabled=True, keys_file=str(tmp_path / "keys.json"))
    models = {"digits_cnn": stub, "digits_dcgan": stub}
    cards = {"digits_cnn": card("digits_cnn", "classification"), "digits_dcgan": card("digits_dcgan", "generation")}
    gateway = Gateway(models, cards, limits or LimitsArgs(), auth, Limiter() if limited else None)  # type: ignore[arg-type]
    app = create_app(gateway)  # as each ingress replica builds it over itself

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    return call


@pytest.fixture
def stub() -> StubModel:
    return StubModel()


@pytest.fixture
def call(stub: StubModel) -> Call:
    return routes(stub)


@pytest.mark.parametrize("training", [False, True])
def test_each_ingress_replica_builds_this_app_over_itself(stub: StubModel, tmp_path: Path, training: bool) -> None:
    """The Serve deployment is the gateway; the app it builds is create_app's, over that replica,
    with the lifecycle routes when training is enabled."""
    replica_class: Any = Ingress.func_or_class  # type: ignore[attr-defined]
    assert issubclass(replica_class, Gateway)
    replica = object.__new__(replica_class)
    ingress_class = replica_class.__mro__[1]  # the class @serve.ingress wrapped
    ingress_class.__init__(replica, {"digits_cnn": stub}, {"digits_cnn": card("digits_cnn", "classification")}, LimitsArgs(), AuthArgs(enabled=False), None, TrainingArgs(enabled=training, store=str(tmp_path)))  # fmt: skip
    app = replica_class.__serve_build_asgi_app__(replica)
    gateway = Gateway({}, {}, LimitsArgs(), AuthArgs(enabled=False), None)
    expected = reference_app() if training else create_app(gateway)
    assert app.openapi() == expected.openapi()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers[ERROR_CODE_HEADER] == code
    body = response.json()
    assert body["error"] if response.request.url.path.startswith("/v2") else body["error"]["code"] == code


PREDICT = "/v1/models/digits_cnn:predict"


def test_the_three_input_forms_reach_the_model_as_the_same_bytes(call: Call, stub: StubModel) -> None:
    raw = call("POST", PREDICT, content=PNG, headers={"Content-Type": "image/png"})
    multipart = call("POST", PREDICT, files=[("image", ("a.png", PNG, "image/png"))])
    body = {"instances": [{"b64": base64.b64encode(PNG).decode()}], "parameters": {"top_k": 3}}
    as_json = call("POST", PREDICT, json=body)
    assert [r.status_code for r in (raw, multipart, as_json)] == [200, 200, 200]
    sent = [args for name, args in stub.calls if name == "predict"]
    assert [items for items, _ in sent] == [[PNG], [PNG], [PNG]]
    # The model receives the task's parameters validated, as the object (nothing to re-check).
    assert sent[2][1] == ClassificationParams(top_k=3)
    assert sent[0][1] == ClassificationParams()


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (BackPressureError(num_queued_requests=1, max_queued_requests=1), 503, "overloaded"),
        (RayActorError(), 503, "unavailable"),
        (InvalidImage("not an image"), 400, "invalid_image"),
    ],
    ids=["queue-full", "replica-died", "model-refuses-input"],
)
def test_a_failing_model_maps_to_its_status_and_code(
    call: Call, stub: StubModel, failure: BaseException, status: int, code: str
) -> None:
    stub.fail = failure
    response = call("POST", PREDICT, content=PNG, headers={"Content-Type": "image/png"})
    assert_error(response, status, code)
    if status == 503:
        assert response.headers["Retry-After"]


def test_a_model_that_does_not_answer_in_time_is_408(monkeypatch: pytest.MonkeyPatch, stub: StubModel) -> None:
    call = routes(stub, limits=LimitsArgs(request_timeout_s=0.05))
    stub.stall_s = 5.0
    assert_error(call("POST", PREDICT, content=PNG, headers={"Content-Type": "image/png"}), 408, "timeout")
    assert stub.cancelled == 1  # the model's queued work is cancelled, not left to run


@pytest.mark.parametrize(
    ("request_args", "status", "code"),
    [
        (("POST", "/v1/models/nope:predict"), 404, "model_not_found"),
        (("POST", "/v1/models/digits_cnn:generate"), 404, "route_not_supported"),
        (("POST", "/v1/models/digits_dcgan:explain"), 404, "route_not_supported"),
        (("GET", "/v1/nothing/here"), 404, "not_found"),
        (("POST", "/v2/models/nope/infer"), 404, "model_not_found"),
    ],
)
def test_unknown_models_and_routes_are_404_with_their_code(
    call: Call, request_args: tuple[str, str], status: int, code: str
) -> None:
    method, path = request_args
    assert_error(call(method, path, content=PNG, headers={"Content-Type": "image/png"}), status, code)


def test_request_errors_are_4xx_with_their_code(monkeypatch: pytest.MonkeyPatch, stub: StubModel) -> None:
    call = routes(stub, limits=LimitsArgs(max_body_bytes=4096, max_images_per_request=2))
    png = {"Content-Type": "image/png"}
    assert_error(call("POST", PREDICT, content=b"", headers=png), 400, "bad_request")
    assert_error(call("POST", PREDICT, content=b"x" * 5000, headers=png), 413, "payload_too_large")
    assert_error(
        call("POST", PREDICT, content=PNG, headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"
    )
    assert_error(call("POST", f"{PREDICT}?top_k=0", content=PNG, headers=png), 422, "invalid_parameters")
    assert_error(call("POST", f"{PREDICT}?colour=red", content=PNG, headers=png), 422, "invalid_parameters")
    three = [("image", (f"{i}.png", PNG, "image/png")) for i in range(3)]
    assert_error(call("POST", PREDICT, files=three), 413, "payload_too_large")
    assert_error(
        call("POST", PREDICT, content=b"{not json", headers={"Content-Type": "application/json"}), 400, "bad_request"
    )
    two = {"num_images": 2, "seed": 1}
    accept_png = {"Accept": "image/png"}
    assert_error(call("POST", "/v1/models/digits_dcgan:generate", json=two, headers=accept_png), 406, "not_acceptable")
    # None of these reached the model.
    assert stub.calls == []


def test_credentials_come_first_and_are_checked_per_model(
    monkeypatch: pytest.MonkeyPatch, stub: StubModel, tmp_path: Path
) -> None:
    call = routes(stub, tmp_path)
    # No key: 401 before the body is looked at, even one over the body limit.
    oversized = {"Content-Type": "image/png", "Content-Length": str(64 << 20)}
    for path in (PREDICT, "/v1/models/digits_dcgan:generate", "/v1/images:annotate", "/v2/models/digits_cnn/infer"):
        response = call("POST", path, content=b"", headers=oversized)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(call("POST", PREDICT, content=PNG, headers={"X-API-Key": "vmk_wrong"}), 401, "unauthorized")
    # A key without the model: 403; the model lookup comes before the key.
    forbidden = call("POST", PREDICT, content=PNG, headers={"Content-Type": "image/png", "X-API-Key": OTHER_KEY})
    assert_error(forbidden, 403, "forbidden")
    assert_error(call("POST", "/v1/models/nope:predict", headers={"X-API-Key": OTHER_KEY}), 404, "model_not_found")
    allowed = call(
        "POST", PREDICT, content=PNG, headers={"Content-Type": "image/png", "Authorization": f"Bearer {KEY}"}
    )
    assert allowed.status_code == 200
    assert [name for name, _ in stub.calls] == ["predict"]


def test_a_tenant_over_its_rate_limit_is_429_with_retry_after(
    monkeypatch: pytest.MonkeyPatch, stub: StubModel, tmp_path: Path
) -> None:
    call = routes(stub, tmp_path, limited=True)
    response = call("POST", PREDICT, content=PNG, headers={"Content-Type": "image/png", "X-API-Key": KEY})
    assert_error(response, 429, "rate_limited")
    assert response.headers["Retry-After"]
    assert stub.calls == []
