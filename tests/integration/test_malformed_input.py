"""The malformed-input corpus and mutation fuzzing against every image route of a real Serve
deployment: never a 5xx, always the expected status, every answer sooner than the decode-time
budget, the model replica neither restarted nor bloated.

Every route carries the same bytes and gets the same status for a case: the ingress checks
bodies (size, content type, framing) and the replica decodes with decode_image, so
  - raw body (`:predict` with the case's Content-Type): a Content-Type outside image/* and
    application/octet-stream (application/pdf, application/postscript, video/mp4) is 415 from
    the ingress before decoding, the status the bytes would get anyway; an empty body is 400.
  - multipart `image` part, JSON `instances[].b64`, v2 BYTES `image` input (binary extension):
    the part's Content-Type is ignored, the bytes decide.
"""

from __future__ import annotations

import base64
import io
import json
import random
import statistics
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from deployments.args import LimitsArgs
from deployments.topology import model_app_name
from models.images import ImageLimits
from tests.conftest import encode
from tests.integration.conftest import MAIN_APP
from tests.security.corpus import CorpusCase, generate, mutations

MODEL = "digits_cnn"
PREDICT = f"/v1/models/{MODEL}:predict"
INFER = f"/v2/models/{MODEL}/infer"
REPLICA_TITLE = f"ServeReplica:{model_app_name(MAIN_APP, MODEL)}:{MODEL}"
REQUEST_TIMEOUT_S = LimitsArgs().request_timeout_s
# Hostile bytes must be refused by the cheap checks (size, magic bytes, header), never by a decode
# that runs until the per-image budget stops it: every answer comes sooner than that budget. The
# slowest case is the over-the-byte-limit PNG (20 MiB through the ingress), a few seconds at worst
# on a starved 2-core machine.
MAX_ANSWER_SECONDS = ImageLimits().max_decode_seconds
# A typical hostile request costs about as much as a valid one: a median well under a second
# (a tenth of a second or so even on a starved 2-core machine).
MAX_MEDIAN_SECONDS = 1.0
# What the replica keeps after decoding hostile images is allocator memory, not a leak: it levels
# off within the first few hundred requests (at most about 150 MiB measured) and stays there.
MAX_GROWTH_BYTES = 200 * 1024 * 1024
WORKERS = 4  # a 2-core CI machine: enough to overlap network and decoding, no more
FUZZ_COUNT = 300

CORPUS = generate()

Send = Callable[[httpx.Client, bytes, str], httpx.Response]


def send_raw(client: httpx.Client, data: bytes, content_type: str) -> httpx.Response:
    return client.post(PREDICT, content=data, headers={"Content-Type": content_type})


def send_multipart(client: httpx.Client, data: bytes, content_type: str) -> httpx.Response:
    return client.post(PREDICT, files=[("image", ("upload", data, content_type))])


def send_json(client: httpx.Client, data: bytes, content_type: str) -> httpx.Response:
    return client.post(PREDICT, json={"instances": [{"b64": base64.b64encode(data).decode()}]})


def send_v2_binary(client: httpx.Client, data: bytes, content_type: str) -> httpx.Response:
    # Binary tensor data extension: a JSON header, then each BYTES element as a 4-byte
    # little-endian length and its bytes.
    element = struct.pack("<I", len(data)) + data
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(element)},
                }
            ]
        }
    ).encode()
    return client.post(
        INFER,
        content=header + element,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )


ROUTES: dict[str, Send] = {
    "raw": send_raw,
    "multipart": send_multipart,
    "json": send_json,
    "v2_binary": send_v2_binary,
}


@dataclass(frozen=True)
class Answer:
    """What one request got back, and how long it took."""

    name: str
    status: int
    seconds: float
    body: bytes


@dataclass(frozen=True)
class ReplicaState:
    """The digits_cnn replica as seen from outside: its load time, its processes' memory."""

    started_at: float
    pids: frozenset[int]
    rss: int
    uss: int


def replica_state(client: httpx.Client) -> ReplicaState:
    """started_at from the API; pid and memory of every process of this cluster titled as the replica."""
    # psutil is Ray's own copy (ray/thirdparty_files), on sys.path once ray is imported.
    import psutil

    started_at = float(client.get(f"/v1/models/{MODEL}").json()["started_at"])
    # Only this session's cluster: ray.init() started the raylet, whose workers host the
    # replicas, so they descend from this process (other clusters on the machine do not).
    processes = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if REPLICA_TITLE in " ".join(proc.cmdline()):
                processes.append(proc)
        except psutil.NoSuchProcess:  # a short-lived helper that exited meanwhile
            continue
    assert processes, f"no process titled {REPLICA_TITLE!r} under this test process"
    memory = [p.memory_full_info() for p in processes]
    return ReplicaState(
        started_at=started_at,
        pids=frozenset(p.pid for p in processes),
        rss=sum(m.rss for m in memory),
        uss=sum(m.uss for m in memory),
    )


def send_all(client: httpx.Client, send: Send, items: list[tuple[str, bytes, str]]) -> list[Answer]:
    """Send every (name, data, content type), a few at a time; each answer timed on its own."""

    def one(item: tuple[str, bytes, str]) -> Answer:
        name, data, content_type = item
        started = time.perf_counter()
        response = send(client, data, content_type)
        return Answer(name, response.status_code, time.perf_counter() - started, response.content)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(one, items))


def assert_error_shape(route: str, answer: Answer) -> None:
    body = json.loads(answer.body)
    if route == "v2_binary":
        assert set(body) == {"error"}, (answer.name, body)
        assert isinstance(body["error"], str), (answer.name, body)
    else:
        assert set(body["error"]) == {"code", "message"}, (answer.name, body)
    assert b"Traceback" not in answer.body


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    # A client timeout past the server's own request timeout: a 408 would still be seen.
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S + 30, limits=limits) as client:
        yield client


@pytest.fixture(scope="module")
def baseline(http: httpx.Client, digit_pngs: list[tuple[bytes, int]]) -> ReplicaState:
    """The replica after every route has served a valid image (imports and pools warmed up)."""
    for send in ROUTES.values():
        for png, _ in digit_pngs[:4]:
            assert send(http, png, "image/png").status_code == 200
    return replica_state(http)


def assert_replica_unharmed(http: httpx.Client, before: ReplicaState, request: pytest.FixtureRequest) -> None:
    after = replica_state(http)
    growth = {"rss": after.rss - before.rss, "uss": after.uss - before.uss}
    # For reports: memory growth since the warm baseline (uss: private pages only).
    request.node.user_properties.append(("replica_growth_mib", {k: round(v / 2**20, 1) for k, v in growth.items()}))
    assert after.started_at == before.started_at, "the replica restarted"
    assert after.pids == before.pids, "the replica's process changed"
    assert growth["rss"] < MAX_GROWTH_BYTES, f"replica RSS grew by {growth['rss'] / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize("route", list(ROUTES))
def test_corpus_gets_only_expected_statuses_when_sent_to_each_image_route(
    http: httpx.Client, baseline: ReplicaState, route: str, request: pytest.FixtureRequest
) -> None:
    cases: dict[str, CorpusCase] = {c.name: c for c in CORPUS}
    answers = send_all(http, ROUTES[route], [(c.name, c.data, c.content_type) for c in CORPUS])
    # The per-case statuses and the slowest answer with its case, for reports (junit XML, hooks).
    request.node.user_properties.append(("statuses", json.dumps({a.name: a.status for a in answers})))
    slowest = max(answers, key=lambda a: a.seconds)
    request.node.user_properties.append(("slowest_seconds", round(slowest.seconds, 3)))
    request.node.user_properties.append(("slowest_case", slowest.name))
    median = statistics.median(a.seconds for a in answers)
    request.node.user_properties.append(("median_seconds", round(median, 3)))

    server_errors = [(a.name, a.status, a.body[:200]) for a in answers if a.status >= 500]
    assert not server_errors
    unexpected = [
        (a.name, a.status, sorted(cases[a.name].expected)) for a in answers if a.status not in cases[a.name].expected
    ]
    assert not unexpected
    slow = [(a.name, round(a.seconds, 2)) for a in answers if a.seconds >= MAX_ANSWER_SECONDS]
    assert not slow
    assert median < MAX_MEDIAN_SECONDS
    for answer in answers:
        if answer.status == 200:
            assert len(json.loads(answer.body)["outputs" if route == "v2_binary" else "predictions"]) >= 1
        else:
            assert_error_shape(route, answer)
    assert_replica_unharmed(http, baseline, request)


def _fuzz_seeds(digit_pngs: list[tuple[bytes, int]]) -> list[tuple[bytes, str]]:
    seeds = []
    for png, _ in digit_pngs[:3]:
        with Image.open(io.BytesIO(png)) as img:
            picture = img.convert("RGB")
        seeds += [
            (png, "image/png"),
            (encode(picture, "JPEG", quality=90), "image/jpeg"),
            (encode(picture, "WEBP", quality=90), "image/webp"),
        ]
    return seeds


@pytest.mark.slow
def test_mutated_digit_images_never_get_a_server_error_when_fuzzed(
    http: httpx.Client, baseline: ReplicaState, digit_pngs: list[tuple[bytes, int]], request: pytest.FixtureRequest
) -> None:
    seeds = _fuzz_seeds(digit_pngs)
    mutated = mutations([data for data, _ in seeds], FUZZ_COUNT, seed=20240601)
    items = [(name, data, seeds[int(name.split("_", 1)[0])][1]) for name, data in mutated]
    answers = send_all(http, send_raw, items)

    assert len(answers) == FUZZ_COUNT
    statuses = dict(sorted(Counter(a.status for a in answers).items()))
    request.node.user_properties.append(("statuses", statuses))
    assert set(statuses) <= {200, 400, 413, 415}, (
        statuses,
        [(a.name, a.status) for a in answers if a.status not in {200, 400, 413, 415}],
    )
    # Both outcomes exercised: the mutations neither all break the image nor all miss.
    assert statuses.get(200, 0) > 0, statuses
    assert statuses.get(400, 0) > 0, statuses
    slowest = max(answers, key=lambda a: a.seconds)
    request.node.user_properties.append(("slowest_seconds", round(slowest.seconds, 3)))
    assert slowest.seconds < MAX_ANSWER_SECONDS, (slowest.name, slowest.seconds)
    assert_replica_unharmed(http, baseline, request)


def test_streamed_body_is_refused_when_it_exceeds_the_body_limit_without_a_length(
    http: httpx.Client, baseline: ReplicaState, request: pytest.FixtureRequest
) -> None:
    limit = LimitsArgs().max_body_bytes
    block = random.Random(1).randbytes(1024 * 1024)

    def chunks() -> Iterator[bytes]:
        for _ in range(2 * limit // len(block)):
            yield block

    # A generator body goes out chunked, with no Content-Length: only counting while reading catches it.
    response = http.post(PREDICT, content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert_replica_unharmed(http, baseline, request)
