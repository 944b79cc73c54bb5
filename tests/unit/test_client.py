"""The Python client (maas) against a real HTTP server on 127.0.0.1 that imitates the API's contract.

The server is a small FastAPI app run by uvicorn in a thread: it records what arrives, checks
the API key, and answers from a per-model script, so retries, headers and bodies are seen on the
wire rather than through mocks. Its v2 route uses the server's own codec (deployments.v2).
Behavioural tests run twice: with VisionClient, and with AsyncVisionClient inside asyncio.run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from contract.errors import error_payload
from deployments import v2
from deployments.errors import ServingError
from maas import ApiError, AsyncVisionClient, RetryPolicy, VisionClient
from maas.client import Images, ParamValue, parse_retry_after, sniff_content_type

KEY = "vmk_test-only-secret-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"png-pixels"
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-pixels"
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"webp-pixels"
RATE_HEADERS = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9", "X-RateLimit-Reset": "1"}


# ---- the fake server -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A scripted answer: an error status (v1 or v2 error body) with its headers; with `proxy`, the
    plain-text page a proxy in front of the server answers instead (Serve's HAProxy's 500.http)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    code: str = "scripted"
    proxy: bool = False


@dataclass
class Seen:
    """One request as the server received it."""

    content_type: str
    authorization: str | None
    query: dict[str, str]
    body: bytes
    parts: list[tuple[str, str | None, str | None, bytes]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def _error(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body, coded = error_payload(request.url.path, code, message)  # as the real ingress answers
    return JSONResponse(body, status_code=status, headers=(headers or {}) | coded)


class FakeApi:
    """The API's contract on a real socket: records requests, checks the key, follows scripts."""

    def __init__(self) -> None:
        self.url = ""
        self.scripts: dict[str, list[Reply]] = defaultdict(list)
        self.seen: dict[str, list[Seen]] = defaultdict(list)
        self.app = self._build()

    def script(self, model: str, *replies: Reply) -> str:
        """Answer the next requests for `model` with `replies`, then succeed; returns a fresh model name."""
        name = f"{model}-{uuid.uuid4().hex[:8]}"
        self.scripts[name] = list(replies)
        return name

    def hits(self, model: str) -> int:
        return len(self.seen[model])

    async def _record(self, model: str, request: Request) -> Seen:
        body = await request.body()
        seen = Seen(
            content_type=request.headers.get("content-type", ""),
            authorization=request.headers.get("authorization"),
            query=dict(request.query_params),
            body=body,
        )
        if seen.content_type.startswith("multipart/form-data"):
            async with request.form() as form:
                for name, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        seen.parts.append((name, value.filename, value.content_type, await value.read()))
                    else:
                        seen.fields[name] = value
        self.seen[model].append(seen)
        return seen

    def _refusal(self, model: str, request: Request) -> Response | None:
        """401 without the right key, else the model's next scripted error, else None (succeed)."""
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return _error(request, 401, "unauthorized", "the API key is not valid", {"WWW-Authenticate": "Bearer"})
        script = self.scripts.get(model)
        if script:
            reply = script.pop(0)
            if reply.proxy:
                return Response("Internal Server Error", reply.status, reply.headers, media_type="text/plain")
            return _error(request, reply.status, reply.code, f"scripted {reply.status}", reply.headers)
        return None

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/v1/models/{model}:predict")
        async def predict(model: str, request: Request) -> Response:
            seen = await self._record(model, request)
            refused = self._refusal(model, request)
            if refused is not None:
                return refused
            # As the ingress counts: each image or video part is an input, all frame parts one clip.
            count = sum(name != "frame" for name, *_ in seen.parts) + any(name == "frame" for name, *_ in seen.parts)
            count = count or 1
            if seen.content_type == "application/json":
                count = len(json_body(seen)["instances"])
            prediction = {"labels": [{"label": "7", "index": 7, "score": 0.9}]}
            body = {"model": model, "model_version": "1", "weights": "t", "predictions": [prediction] * count}
            return JSONResponse(body, headers=RATE_HEADERS)

        @app.post("/v1/models/{model}:generate")
        async def generate(model: str, request: Request) -> Response:
            seen = await self._record(model, request)
            refused = self._refusal(model, request)
            if refused is not None:
                return refused
            body = json_body(seen)
            seed = body.get("seed", 4242)
            label = str(body.get("label", 3))
            if request.headers.get("accept") == "image/png":
                return Response(PNG, media_type="image/png", headers={"X-Seed": str(seed), "X-Label": label})
            image = {"image": base64.b64encode(PNG).decode(), "label": label, "index": int(label)}
            return JSONResponse(
                {
                    "model": model,
                    "model_version": "1",
                    "weights": "t",
                    "seed": seed,
                    "images": [image] * body["num_images"],
                }
            )

        @app.post("/v1/models/{model}:explain")
        async def explain(model: str, request: Request) -> Response:
            seen = await self._record(model, request)
            refused = self._refusal(model, request)
            if refused is not None:
                return refused
            b64 = base64.b64encode(PNG).decode()
            explanation = {"label": "7", "index": 7, "score": 0.9, "method": "grad_cam", "heatmap": b64, "overlay": b64}
            body = {
                "model": model,
                "model_version": "1",
                "weights": "t",
                "explanations": [explanation] * (len(seen.parts) or 1),
            }
            return JSONResponse(body)

        @app.post("/v1/images:annotate")
        async def annotate(request: Request) -> Response:
            seen = await self._record("/v1/images:annotate", request)
            refused = self._refusal("/v1/images:annotate", request)
            if refused is not None:
                return refused
            responses = [
                {
                    "features": [
                        {"model": f["model"], "model_version": "1", "result": {"labels": []}} for f in r["features"]
                    ]
                }
                for r in json_body(seen)["requests"]
            ]
            return JSONResponse({"responses": responses})

        @app.get("/v1/models")
        async def list_models(request: Request) -> Response:
            await self._record("/v1/models", request)
            refused = self._refusal("/v1/models", request)
            return refused or JSONResponse({"models": [{"name": "digits_cnn"}]}, headers=RATE_HEADERS)

        @app.get("/v1/models/{model}")
        async def get_model(model: str, request: Request) -> Response:
            await self._record(model, request)
            if model != "digits_cnn":
                return _error(request, 404, "model_not_found", f"model {model!r} is not served")
            return self._refusal(model, request) or JSONResponse({"name": model, "task": "classification"})

        @app.post("/v2/models/{model}/infer")
        async def infer(model: str, request: Request) -> Response:
            seen = await self._record(model, request)
            if model == "missing":
                return _error(request, 404, "model_not_found", "model 'missing' is not served")
            refused = self._refusal(model, request)
            if refused is not None:
                return refused
            try:
                parsed, binary = v2.split_body(seen.body, request.headers.get(v2.HEADER_LENGTH))
                images = v2.decode_inputs(parsed, binary)["image"]
                assert isinstance(images, list)
                # Outputs computed from the inputs, so the test can tell them apart and check them.
                sizes = np.array([len(image) for image in images], dtype=np.float32)
                heads = np.array([[image[0], image[1]] for image in images], dtype=np.float32)
                outputs = {"sizes": sizes, "heads": heads}
                content, headers = v2.encode_response(model, "1", parsed, outputs, labels=[])
            except ServingError as exc:
                return _error(request, exc.status_code, exc.code, exc.message)
            return Response(content, headers=headers)

        return app


def json_body(seen: Seen) -> dict[str, Any]:
    """The JSON body of a recorded request."""
    parsed = json.loads(seen.body)
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture(scope="module")
def api() -> Iterator[FakeApi]:
    """The fake API served by uvicorn on a free port of 127.0.0.1, for the whole module."""
    fake = FakeApi()
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(fake.app, lifespan="off", ws="none", http="h11", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield fake
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


def dead_port() -> int:
    """A port of 127.0.0.1 where nothing listens (bound once by us, then released)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


class HangUp:
    """A raw TCP server that reads each request, hangs up without answering the first `drops`, then answers."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _serve(self) -> None:
        body = b'{"models": [{"name": "digits_cnn"}]}'
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                self.connections += 1
                if self.connections > self.drops:
                    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    conn.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


# ---- clients under test ------------------------------------------------------------------


class Ceiling(random.Random):
    """Full jitter drawn at its maximum, so that the backoff ceilings themselves are recorded."""

    def random(self) -> float:
        return 1.0


class Sleeps:
    """A fake sleep that records each delay and moves a fake clock, for both clients."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def clock(self) -> float:
        return self.now

    def policy(self, **options: Any) -> RetryPolicy:
        return RetryPolicy(sleep=self.sleep, async_sleep=self.async_sleep, clock=self.clock, **options)


class AsyncAsSync:
    """AsyncVisionClient behind VisionClient's face: each call runs under asyncio.run with a fresh client."""

    def __init__(self, base_url: str, **options: Any) -> None:
        self._base_url = base_url
        self._options = options
        self.last_rate_limit: dict[str, str] = {}

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            async with AsyncVisionClient(self._base_url, **self._options) as client:
                try:
                    return await getattr(client, method)(*args, **kwargs)
                finally:
                    self.last_rate_limit = client.last_rate_limit

        return asyncio.run(call())

    def predict(self, model: str, images: Images, top_k: int | None = None, **parameters: ParamValue) -> Any:
        return self._run("predict", model, images, top_k, **parameters)

    def predict_json(self, model: str, images: Images, parameters: dict[str, Any] | None = None) -> Any:
        return self._run("predict_json", model, images, parameters)

    def predict_video(self, model: str, clips: Any = None, frames: Any = None, **parameters: ParamValue) -> Any:
        return self._run("predict_video", model, clips, frames, **parameters)

    def generate(self, model: str, num_images: int = 1, seed: int | None = None, **kwargs: Any) -> Any:
        return self._run("generate", model, num_images, seed, **kwargs)

    def generate_png(self, model: str, seed: int | None = None, label: int | str | None = None) -> Any:
        return self._run("generate_png", model, seed, label)

    def explain(self, model: str, images: Images, **kwargs: Any) -> Any:
        return self._run("explain", model, images, **kwargs)

    def annotate(self, requests: Any) -> Any:
        return self._run("annotate", requests)

    def models(self) -> Any:
        return self._run("models")

    def model(self, name: str) -> Any:
        return self._run("model", name)

    def infer(self, model: str, images: Images) -> Any:
        return self._run("infer", model, images)

    def healthy(self) -> bool:
        return bool(self._run("healthy"))


Client = VisionClient | AsyncAsSync
Connect = Callable[..., Client]


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest, api: FakeApi, sleeps: Sleeps) -> Iterator[Connect]:
    """A factory of clients of one kind, on the fake API with the right key and recorded sleeps by default."""
    opened: list[VisionClient] = []

    def make(url: str | None = None, api_key: str | None = KEY, **policy: Any) -> Client:
        options: dict[str, Any] = {"api_key": api_key, "timeout": 5.0, "retry": sleeps.policy(**policy)}
        if request.param == "async":
            return AsyncAsSync(url or api.url, **options)
        client = VisionClient(url or api.url, **options)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


# ---- requests on the wire ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "content_type"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp"), (b"GIF89a...", "application/octet-stream")],
)
def test_single_image_is_sent_raw_with_its_sniffed_type_when_predicting_one(
    api: FakeApi, connect: Connect, image: bytes, content_type: str
) -> None:
    """One image goes as the raw body, typed by its magic bytes; parameters go in the query string."""
    model = api.script("raw")
    result = connect().predict(model, [image], top_k=3)
    assert len(result["predictions"]) == 1
    (seen,) = api.seen[model]
    assert seen.content_type == content_type
    assert seen.body == image
    assert seen.query == {"top_k": "3"}
    assert seen.authorization == f"Bearer {KEY}"


def test_several_images_arrive_as_image_parts_in_order_when_multipart(
    api: FakeApi, connect: Connect, tmp_path: Path
) -> None:
    """Several images become one `image` part each, in order, with parameters as form fields."""
    path = tmp_path / "digit.webp"
    path.write_bytes(WEBP)
    model = api.script("multi")
    result = connect().predict(model, [PNG, JPEG, path], top_k=2, flag=True)
    assert len(result["predictions"]) == 3
    (seen,) = api.seen[model]
    assert seen.content_type.startswith("multipart/form-data; boundary=")
    assert [(name, filename, kind, data) for name, filename, kind, data in seen.parts] == [
        ("image", "image0.png", "image/png", PNG),
        ("image", "image1.jpg", "image/jpeg", JPEG),
        ("image", "digit.webp", "image/webp", WEBP),
    ]
    assert seen.fields == {"top_k": "2", "flag": "true"}
    assert seen.query == {}


def test_json_form_sends_base64_instances_and_parameters_when_predict_json(api: FakeApi, connect: Connect) -> None:
    """predict_json sends KServe v1's instances and parameters."""
    model = api.script("json")
    result = connect().predict_json(model, [PNG, JPEG], {"top_k": 1})
    assert len(result["predictions"]) == 2
    (seen,) = api.seen[model]
    assert seen.content_type == "application/json"
    body = json_body(seen)
    assert [base64.b64decode(i["b64"]) for i in body["instances"]] == [PNG, JPEG]
    assert body["parameters"] == {"top_k": 1}


def test_catalogue_routes_return_entries_and_rate_limits_when_allowed(api: FakeApi, connect: Connect) -> None:
    """models() and model() return the catalogue; the X-RateLimit-* headers are exposed."""
    client = connect()
    assert client.models() == [{"name": "digits_cnn"}]
    assert client.last_rate_limit == {"limit": "10", "remaining": "9", "reset": "1"}
    assert client.model("digits_cnn")["task"] == "classification"
    with pytest.raises(ApiError) as caught:
        client.model("nope")
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")
    assert "nope" in caught.value.message


def test_healthy_is_true_when_served_and_false_without_retrying_when_nothing_listens(
    connect: Connect, sleeps: Sleeps
) -> None:
    """healthy() tries once: a dead address is simply unhealthy."""
    assert connect().healthy()
    assert not connect(f"http://127.0.0.1:{dead_port()}").healthy()
    assert sleeps.delays == []


# ---- retries -----------------------------------------------------------------------------


def test_retry_after_is_honoured_and_the_body_resent_when_overloaded(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """Two 503s with Retry-After: 1 cost two sleeps of exactly 1 s and the same body three times."""
    busy = Reply(503, {"Retry-After": "1"}, "overloaded")
    model = api.script("busy", busy, busy)
    result = connect().predict(model, [PNG, JPEG], top_k=1)
    assert len(result["predictions"]) == 2
    assert sleeps.delays == [1.0, 1.0]
    bodies = [seen.body for seen in api.seen[model]]
    assert len(bodies) == 3
    assert bodies[0] == bodies[1] == bodies[2]


def test_rate_limit_is_reported_then_retried_after_its_delay_when_429(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """429 carries Retry-After and X-RateLimit-*: surfaced in ApiError without retries, honoured with them."""
    limited = Reply(
        429,
        {"Retry-After": "2", "X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2"},
        "rate_limited",
    )
    once = connect(max_attempts=1)
    model = api.script("limited", limited)
    with pytest.raises(ApiError) as caught:
        once.predict(model, [PNG])
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (429, "rate_limited", 2.0)
    assert error.headers["x-ratelimit-remaining"] == "0"
    assert once.last_rate_limit == {"limit": "10", "remaining": "0", "reset": "2"}
    assert sleeps.delays == []

    client = connect()
    model = api.script("limited", limited)
    client.predict(model, [PNG])
    assert sleeps.delays == [2.0]
    assert api.hits(model) == 2
    assert client.last_rate_limit["remaining"] == "9"


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [("600", 5.0, 5.0), (4.0, 2.0, 4.0), (-60.0, 0.0, 0.0)],
)
def test_retry_after_is_capped_and_dates_are_read_when_given(
    api: FakeApi, connect: Connect, sleeps: Sleeps, retry_after: str | float, low: float, high: float
) -> None:
    """Retry-After in seconds is capped at max_retry_after; an HTTP date becomes the seconds until then."""
    if isinstance(retry_after, float):
        # A float stands for a date that many seconds from now, built here rather than at collection.
        retry_after = formatdate(time.time() + retry_after, usegmt=True)
    model = api.script("later", Reply(503, {"Retry-After": retry_after}))
    connect(max_retry_after=5.0).predict(model, [PNG])
    (delay,) = sleeps.delays
    assert low <= delay <= high


def test_backoff_is_used_when_a_retryable_status_has_no_retry_after(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """Without Retry-After, the waits follow the backoff (drawn here at its ceiling)."""
    model = api.script("bare", Reply(503), Reply(503), Reply(503))
    connect(rng=Ceiling()).predict(model, [PNG])
    assert sleeps.delays == pytest.approx([0.2, 0.4, 0.8])


@pytest.mark.parametrize("status", [400, 403, 404, 408, 413, 415, 422, 500])
def test_error_goes_straight_to_the_caller_when_its_status_is_not_retryable(
    api: FakeApi, connect: Connect, sleeps: Sleeps, status: int
) -> None:
    """Of the API's own errors only 429 and 503 are retried: every other is raised after one request."""
    model = api.script("broken", Reply(status, {"Retry-After": "1"}, "scripted_code"))
    with pytest.raises(ApiError) as caught:
        connect().predict(model, [PNG])
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        status,
        "scripted_code",
        f"scripted {status}",
    )
    assert api.hits(model) == 1
    assert sleeps.delays == []


def test_proxy_error_page_is_retried_as_a_lost_request_when_a_replica_died_mid_request(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """A proxy's plain 500/502/504 page (no error code of the API's) is sent again; the API's own 500 is not."""
    model = api.script("lost", Reply(500, proxy=True), Reply(502, proxy=True), Reply(504, proxy=True))
    assert connect().predict(model, [PNG])["predictions"]
    assert api.hits(model) == 4
    assert len(sleeps.delays) == 3

    ours = api.script("ours", Reply(500, code="internal"))
    with pytest.raises(ApiError) as caught:
        connect().predict(ours, [PNG])
    assert (caught.value.code, caught.value.from_proxy, api.hits(ours)) == ("internal", False, 1)

    refused = api.script("refused", Reply(501, proxy=True))
    with pytest.raises(ApiError) as caught:
        connect().predict(refused, [PNG])
    assert (caught.value.code, caught.value.from_proxy, api.hits(refused)) == ("http_501", True, 1)


def test_wrong_key_is_refused_once_and_never_shown_when_unauthorized(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """401 is not retried, and the key sent appears in no message, repr or header of the error."""
    secret = "vmk_wrong-but-still-secret-42"
    model = api.script("auth")
    client = connect(api_key=secret)
    with pytest.raises(ApiError) as caught:
        client.predict(model, [PNG])
    error = caught.value
    assert (error.status, error.code) == (401, "unauthorized")
    assert api.seen[model][0].authorization == f"Bearer {secret}"
    assert api.hits(model) == 1
    assert sleeps.delays == []
    shown = [str(error), repr(error), repr(client), *error.headers.values(), *map(str, error.args)]
    assert not any(secret in text for text in shown)


def test_key_never_appears_in_reprs_when_given() -> None:
    """Both clients show only that a key is set."""
    sync = VisionClient("http://127.0.0.1:9", api_key=KEY)
    sync.close()

    async def async_repr() -> str:
        async with AsyncVisionClient("http://127.0.0.1:9", api_key=KEY) as client:
            return repr(client)

    for text in (repr(sync), asyncio.run(async_repr())):
        assert KEY not in text
        assert "api_key=***" in text


def test_deadline_stops_retrying_when_the_next_wait_would_pass_it(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """With timeout_total 2.5 s and Retry-After 1 s, the third 503 is final: no sleep past the deadline."""
    busy = Reply(503, {"Retry-After": "1"}, "overloaded")
    model = api.script("deadline", *[busy] * 10)
    with pytest.raises(ApiError) as caught:
        connect(timeout_total=2.5, max_attempts=10).predict(model, [PNG])
    assert caught.value.status == 503
    assert api.hits(model) == 3
    assert sleeps.delays == [1.0, 1.0]


def test_connection_failures_are_retried_with_growing_capped_backoff_when_nothing_listens(
    connect: Connect, sleeps: Sleeps
) -> None:
    """A refused connection is retried max_attempts times, each wait doubling up to the cap."""
    client = connect(
        f"http://127.0.0.1:{dead_port()}", max_attempts=5, backoff_base=0.1, backoff_cap=0.3, rng=Ceiling()
    )
    with pytest.raises(httpx.ConnectError):
        client.predict("digits_cnn", [PNG])
    assert sleeps.delays == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_hang_up_before_the_response_is_retried_when_the_server_drops_the_connection(
    connect: Connect, sleeps: Sleeps
) -> None:
    """A connection closed before any response (RemoteProtocolError) is retried on a new one."""
    server = HangUp(drops=2)
    try:
        assert connect(server.url).models() == [{"name": "digits_cnn"}]
    finally:
        server.close()
    assert server.connections == 3
    assert len(sleeps.delays) == 2


# ---- Open Inference Protocol v2 ----------------------------------------------------------


def test_v2_binary_round_trip_decodes_output_tensors_when_inferring(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """BYTES input and FP32 outputs in the binary extension, read by the server's own codec, after one 503."""
    model = api.script("v2", Reply(503, {"Retry-After": "0"}))
    images = [PNG, JPEG + b"x" * 300, WEBP]
    outputs = connect().infer(model, images)
    assert set(outputs) == {"sizes", "heads"}
    assert outputs["sizes"].dtype == np.float32
    np.testing.assert_array_equal(outputs["sizes"], np.array([len(i) for i in images], dtype=np.float32))
    np.testing.assert_array_equal(outputs["heads"], np.array([[i[0], i[1]] for i in images], dtype=np.float32))
    assert sleeps.delays == [0.0]
    seen = api.seen[model][-1]
    assert seen.content_type == "application/octet-stream"
    assert len(api.seen[model]) == 2


def test_v2_error_is_parsed_when_the_body_is_a_bare_message(api: FakeApi, connect: Connect) -> None:
    """v2 errors are {"error": "message"}: the code comes from the server's header."""
    with pytest.raises(ApiError) as caught:
        connect().infer("missing", [PNG])
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")
    assert caught.value.message == "model 'missing' is not served"


# ---- pieces without a server --------------------------------------------------------------


def _error_table() -> list[type[ServingError]]:
    """Every API error the server raises, the base included."""
    found, todo = [], [ServingError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo.extend(kind.__subclasses__())
    return found


@pytest.mark.parametrize("path", ["/v1/models/digits_cnn:predict", "/v2/models/digits_cnn/infer"])
@pytest.mark.parametrize("kind", _error_table(), ids=lambda kind: kind.__name__)
def test_client_reads_the_servers_own_error_code_for_every_error(kind: type[ServingError], path: str) -> None:
    error = kind("what went wrong")
    body, headers = error_payload(path, error.code, error.message)
    response = httpx.Response(error.status_code, json=body, headers=headers)
    parsed = ApiError.from_response(response)
    assert (parsed.status, parsed.code, parsed.message) == (error.status_code, error.code, "what went wrong")


def test_an_answer_from_something_else_gets_no_guessed_code() -> None:
    page = httpx.Response(503, text="<html>503 Service Unavailable</html>", headers={"Content-Type": "text/html"})
    parsed = ApiError.from_response(page)
    assert parsed.code == "http_503"
    assert "503 Service Unavailable" in parsed.message


def test_full_jitter_stays_under_the_capped_ceiling_when_seeded() -> None:
    """Backoff n is uniform in [0, min(cap, base * 2**(n-1))], and reproducible from the seed."""
    policy = RetryPolicy(rng=random.Random(7))
    same = random.Random(7)
    for failures in range(1, 12):
        ceiling = min(10.0, 0.2 * 2 ** (failures - 1))
        delay = policy.backoff(failures)
        assert 0.0 <= delay <= ceiling
        assert delay == same.uniform(0.0, ceiling)


def test_retry_after_is_read_as_seconds_or_date_when_valid() -> None:
    """Seconds, past and future HTTP dates; garbage and absence give None."""
    now = 1_700_000_000.0
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


def test_content_type_is_sniffed_from_magic_bytes_when_sending_raw() -> None:
    """JPEG, PNG and WebP by content; anything else is application/octet-stream."""
    assert [sniff_content_type(b) for b in (JPEG, PNG, WEBP, b"RIFF0000WAVE", b"")] == [
        "image/jpeg",
        "image/png",
        "image/webp",
        "application/octet-stream",
        "application/octet-stream",
    ]


@pytest.mark.parametrize("options", [{"max_attempts": 0}, {"backoff_base": -1.0}, {"timeout_total": 0.0}])
def test_policy_is_refused_when_its_values_are_invalid(options: dict[str, Any]) -> None:
    """No attempts, negative waits or a non-positive deadline are configuration errors."""
    with pytest.raises(ValueError):  # noqa: PT011 - any message will do
        RetryPolicy(**options)


def test_no_images_is_refused_before_sending_when_the_list_is_empty() -> None:
    """An empty list never reaches the server."""
    with VisionClient("http://127.0.0.1:9") as client, pytest.raises(ValueError, match="no images"):
        client.predict("digits_cnn", [])


# ---- generate, explain, annotate, video --------------------------------------------------


def test_generate_sends_count_seed_label_and_parameters_as_json_when_given(api: FakeApi, connect: Connect) -> None:
    """generate() posts {num_images, seed, label, parameters} and returns the answer's images and seed."""
    model = api.script("gen")
    body = connect().generate(model, num_images=3, seed=1234, label=7, truncation=0.5)
    assert body["seed"] == 1234
    assert len(body["images"]) == 3
    assert base64.b64decode(body["images"][0]["image"]) == PNG
    (seen,) = api.seen[model]
    assert seen.content_type == "application/json"
    assert json_body(seen) == {"num_images": 3, "seed": 1234, "label": 7, "parameters": {"truncation": 0.5}}


def test_generate_leaves_seed_and_label_to_the_server_when_not_given(api: FakeApi, connect: Connect) -> None:
    """No null seed or label on the wire: the server picks them and says which."""
    model = api.script("gen")
    assert connect().generate(model)["seed"] == 4242
    assert json_body(api.seen[model][0]) == {"num_images": 1, "parameters": {}}


def test_generate_png_returns_bytes_seed_and_label_after_retrying_when_overloaded(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """Accept: image/png gives the raw PNG with X-Seed and X-Label; a 503 first is waited out."""
    model = api.script("png", Reply(503, {"Retry-After": "1"}, "overloaded"))
    png, seed, label = connect().generate_png(model, seed=8, label="2")
    assert (png, seed, label) == (PNG, 8, "2")
    assert sleeps.delays == [1.0]
    assert len(api.seen[model]) == 2
    assert json_body(api.seen[model][-1]) == {"num_images": 1, "seed": 8, "label": "2", "parameters": {}}


def test_generate_png_is_an_invalid_response_when_the_server_answers_json() -> None:
    """A JSON answer to Accept: image/png is refused rather than returned as bytes."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"seed": 1, "images": []}))
    with VisionClient("http://maas.invalid", transport=transport) as client, pytest.raises(ApiError) as caught:
        client.generate_png("digits_dcgan")
    assert caught.value.code == "invalid_response"
    assert "image/png" in caught.value.message


def test_generate_error_maps_to_api_error_when_parameters_are_invalid(
    api: FakeApi, connect: Connect, sleeps: Sleeps
) -> None:
    """A 422 from :generate is raised at once with its code and message."""
    model = api.script("gen", Reply(422, code="invalid_parameters"))
    with pytest.raises(ApiError) as caught:
        connect().generate(model, num_images=2)
    assert (caught.value.status, caught.value.code, caught.value.message) == (422, "invalid_parameters", "scripted 422")
    assert sleeps.delays == []


def test_explain_sends_target_and_alpha_as_query_or_fields_when_given(api: FakeApi, connect: Connect) -> None:
    """One image: raw body and query string; several: image parts and form fields; unset ones are absent."""
    client = connect()
    model = api.script("explain")
    one = client.explain(model, PNG, target="7", alpha=0.25)
    assert one["explanations"][0]["method"] == "grad_cam"
    assert api.seen[model][0].query == {"target": "7", "alpha": "0.25"}
    assert api.seen[model][0].body == PNG

    model = api.script("explain")
    several = client.explain(model, [PNG, JPEG], target_index=3)
    assert len(several["explanations"]) == 2
    (seen,) = api.seen[model]
    assert [part[0] for part in seen.parts] == ["image", "image"]
    assert seen.fields == {"target_index": "3"}


def test_annotate_builds_features_from_every_friendly_form_and_retries_when_rate_limited(
    api: FakeApi, connect: Connect, sleeps: Sleeps, tmp_path: Path
) -> None:
    """Names, (model, params) pairs and feature dicts all become {"model", "parameters"}; images go as base64."""
    path = tmp_path / "scene.jpg"
    path.write_bytes(JPEG)
    api.scripts["/v1/images:annotate"] = [Reply(429, {"Retry-After": "2"}, "rate_limited")]
    body = connect().annotate(
        [
            (PNG, ["digits_cnn", ("digits_detector", {"score_threshold": 0.3})]),
            (path, [{"model": "digits_segmenter", "parameters": {"min_fraction": 0.1}}]),
        ]
    )
    assert [[f["model"] for f in r["features"]] for r in body["responses"]] == [
        ["digits_cnn", "digits_detector"],
        ["digits_segmenter"],
    ]
    assert sleeps.delays == [2.0]
    sent = json_body(api.seen["/v1/images:annotate"][-1])["requests"]
    assert [base64.b64decode(r["image"]["b64"]) for r in sent] == [PNG, JPEG]
    assert sent[0]["features"] == [
        {"model": "digits_cnn", "parameters": {}},
        {"model": "digits_detector", "parameters": {"score_threshold": 0.3}},
    ]
    assert sent[1]["features"] == [{"model": "digits_segmenter", "parameters": {"min_fraction": 0.1}}]


@pytest.mark.parametrize(
    ("requests", "message"),
    [([], "no images"), ([(PNG, [])], "at least one feature"), ([(PNG, "digits_cnn")], "must be a list")],
)
def test_annotate_is_refused_before_sending_when_the_requests_are_malformed(requests: list[Any], message: str) -> None:
    """No image, no feature, or a bare string as the feature list are caller errors."""
    with VisionClient("http://127.0.0.1:9") as client, pytest.raises(ValueError, match=message):
        client.annotate(requests)


def test_video_clips_and_frames_go_as_video_and_frame_parts_when_one_frame_clip(api: FakeApi, connect: Connect) -> None:
    """Encoded clips become `video` parts, one clip's still frames `frame` parts in order, params fields."""
    mp4 = b"\x00\x00\x00\x18ftypisom" + b"mp4-data"
    model = api.script("video")
    body = connect().predict_video(model, clips=[mp4], frames=[PNG, JPEG, PNG], top_k=2)
    assert len(body["predictions"]) == 2
    (seen,) = api.seen[model]
    assert [(name, data) for name, _, _, data in seen.parts] == [
        ("video", mp4),
        ("frame", PNG),
        ("frame", JPEG),
        ("frame", PNG),
    ]
    assert seen.fields == {"top_k": "2"}


def test_video_frame_clips_go_as_json_instances_when_several(api: FakeApi, connect: Connect) -> None:
    """Several clips of frames need the JSON form: one {"frames": [...]} instance per clip, after the clips."""
    gif = b"GIF89a" + b"frames"
    model = api.script("video")
    body = connect().predict_video(model, clips=gif, frames=[[PNG, PNG], (JPEG,)], top_k=1)
    assert len(body["predictions"]) == 3
    sent = json_body(api.seen[model][0])
    assert sent["parameters"] == {"top_k": 1}
    decoded = [
        base64.b64decode(i["b64"]) if "b64" in i else [base64.b64decode(f) for f in i["frames"]]
        for i in sent["instances"]
    ]
    assert decoded == [gif, [PNG, PNG], [JPEG]]


def test_video_is_refused_before_sending_when_neither_clips_nor_frames() -> None:
    """predict_video needs something to classify."""
    with VisionClient("http://127.0.0.1:9") as client, pytest.raises(ValueError, match="clips, frames"):
        client.predict_video("moving_digits_lstm")


@pytest.mark.parametrize("task", ["detection", "segmentation", "denoising"])
def test_predict_returns_any_tasks_json_unchanged_when_the_model_is_not_a_classifier(task: str) -> None:
    """predict() is task-agnostic: the answer's JSON comes back as it is."""
    predictions = {
        "detection": {"detections": [{"label": "1", "index": 1, "score": 0.9, "box": [1.0, 2.0, 3.0, 4.0]}]},
        "segmentation": {"mask": "iVBO", "mask_format": "png", "size": [8, 8], "classes": []},
        "denoising": {"image": "iVBO", "size": [8, 8]},
    }
    answer = {"model": task, "model_version": "1", "weights": "t", "predictions": [predictions[task]]}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    with VisionClient("http://maas.invalid", transport=transport) as client:
        assert client.predict(task, PNG) == answer
