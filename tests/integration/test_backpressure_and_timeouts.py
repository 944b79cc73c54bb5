"""503 with Retry-After when a model's queue is full; 408 when a request outlives its timeout."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from contract.params import ClassificationParams
from tests.conftest import encode
from tests.integration.conftest import CORE_MODELS, MAIN_APP, ServeCluster, default_app_config
from tests.serve_cluster import call_deployment


def _app(prefix: str, deployment: dict[str, Any], limits: dict[str, Any] | None = None) -> dict[str, Any]:
    app = default_app_config(only=CORE_MODELS)
    app["route_prefix"] = prefix
    app["args"] = {"models": [{"name": "digits_cnn"}], "limits": limits or {}, "auth": {"enabled": False}}
    app["deployments"] = [{"name": "Ingress", "ray_actor_options": {"num_cpus": 0.1}}, deployment]
    return app


@pytest.fixture(scope="module")
def constrained(cluster: ServeCluster) -> Iterator[str]:
    main = cluster.apps[MAIN_APP]
    cluster.deploy(
        {
            MAIN_APP: main,
            "tight": _app(
                "/tight",
                {
                    "name": "digits_cnn",
                    "ray_actor_options": {"num_cpus": 0.1},
                    "user_config": {"max_requests": 2, "max_batch_size": 1, "batch_wait_timeout_s": 0.0},
                },
            ),
            "patient": _app(
                "/patient",
                {
                    "name": "digits_cnn",
                    "ray_actor_options": {"num_cpus": 0.1},
                    "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
                },
            ),
            "hasty": _app(
                "/hasty",
                {"name": "digits_cnn", "ray_actor_options": {"num_cpus": 0.1}},
                {"request_timeout_s": 0.005},
            ),
        }
    )
    yield cluster.url
    cluster.deploy({MAIN_APP: main})


def _big_png() -> bytes:
    # ~2000x2000 noise: tens of milliseconds to decode, so the queue stays occupied.
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (2000, 2000), dtype=np.uint8)))


def test_full_queue_answers_503_with_retry_after_never_500(constrained: str) -> None:
    body = _big_png()

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=constrained, timeout=60.0) as http:
            return http.post("/tight/v1/models/digits_cnn:predict", content=body, headers={"Content-Type": "image/png"})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, range(32)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert 200 in statuses
    assert 503 in statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["Retry-After"] == "1"
    assert rejected.json()["error"]["code"] == "overloaded"


def test_request_over_its_timeout_answers_408(constrained: str) -> None:
    with httpx.Client(base_url=constrained, timeout=60.0) as http:
        response = http.post(
            "/hasty/v1/models/digits_cnn:predict", content=_big_png(), headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 408
        assert response.json()["error"]["code"] == "timeout"
        # The ingress keeps serving after a timeout, and the model replica serves the next request.
        assert http.get("/hasty/healthz").status_code == 200
    result = call_deployment("hasty", "digits_cnn", "predict", [_big_png()], ClassificationParams(top_k=1))
    assert len(result.predictions) == 1


def test_client_that_disconnects_cancels_its_queued_work(constrained: str) -> None:
    before = call_deployment("patient", "digits_cnn", "stats", timeout_s=30)["inference_count"]
    body = _big_png()

    def send_and_hang_up(_: int) -> str:
        try:
            httpx.post(
                f"{constrained}/patient/v1/models/digits_cnn:predict",
                content=body,
                headers={"Content-Type": "image/png"},
                timeout=0.3,
            )
            return "answered"
        except httpx.TimeoutException:
            return "disconnected"

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(send_and_hang_up, range(12)))
    time.sleep(5)  # anything still queued would have run by now
    ran = call_deployment("patient", "digits_cnn", "stats", timeout_s=30)["inference_count"] - before
    # Most clients hang up while their request waits (the replica answering HTTP itself is fast
    # enough that a few are answered within 0.3 s); the work of those that hung up is cancelled.
    assert outcomes.count("disconnected") >= len(outcomes) // 2
    assert ran < outcomes.count("disconnected")
