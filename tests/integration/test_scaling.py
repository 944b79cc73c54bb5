"""Live reconfiguration and autoscaling of a model deployment, driven through the Serve config."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import httpx
import pytest
from ray import serve

from tests.integration.conftest import CORE_MODELS, MAIN_APP, ServeCluster, default_app_config
from tests.serve_cluster import serve_app


def deployment_options(app: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in app["deployments"] if d["name"] == name)


def replicas(app: str, deployment: str) -> int:
    status = serve.status().applications[serve_app(app, deployment)].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_reconfigure_changes_batch_size_live_without_restarting_the_replica(
    cluster: ServeCluster, client: httpx.Client, digit_pngs: list[tuple[bytes, int]]
) -> None:
    before = client.get("/v1/models/digits_cnn").json()
    assert before["batching"]["max_batch_size"] == 16
    app = copy.deepcopy(cluster.apps[MAIN_APP])
    deployment_options(app, "digits_cnn")["user_config"] = {
        "max_batch_size": 2,
        "batch_wait_timeout_s": 0.05,
        "measure": False,
    }
    try:
        cluster.deploy({MAIN_APP: app})
        wait_for(
            lambda: client.get("/v1/models/digits_cnn").json()["batching"]["max_batch_size"] == 2, 60, "reconfigure"
        )
        after = client.get("/v1/models/digits_cnn").json()
        assert after["started_at"] == before["started_at"]  # same replica, reconfigured in place
        stats_before = client.get("/v2/models/digits_cnn/stats").json()["model_stats"][0]
        files = [("image", (f"{i}.png", digit_pngs[i][0], "image/png")) for i in range(12)]
        assert client.post("/v1/models/digits_cnn:predict", files=files).status_code == 200
        stats_after = client.get("/v2/models/digits_cnn/stats").json()["model_stats"][0]
        counts_before = {s["batch_size"]: s["count"] for s in stats_before["batch_stats"]}
        new = {s["batch_size"]: s["count"] - counts_before.get(s["batch_size"], 0) for s in stats_after["batch_stats"]}
        assert {size for size, n in new.items() if n > 0} <= {1, 2}
        assert new.get(2, 0) >= 1
    finally:
        cluster.deploy({MAIN_APP: default_app_config()})


@pytest.mark.slow
def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(
    cluster: ServeCluster, digit_pngs: list[tuple[bytes, int]]
) -> None:
    scaling = default_app_config(only=CORE_MODELS)
    scaling["route_prefix"] = "/scaling"
    scaling["args"]["models"] = [{"name": "digits_cnn"}]
    scaling["deployments"] = [
        {"name": "Ingress", "ray_actor_options": {"num_cpus": 0.1}},
        {
            "name": "digits_cnn",
            "ray_actor_options": {"num_cpus": 0.25},
            "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
            # On GPU nodes the same block carries ray_actor_options.num_gpus (e.g. 0.5).
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 1,
                "downscale_delay_s": 3,
                "metrics_interval_s": 0.5,
                "look_back_period_s": 2,
            },
        },
    ]
    cluster.deploy({MAIN_APP: cluster.apps[MAIN_APP], "scaling": scaling})
    assert replicas("scaling", "digits_cnn") == 1
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=cluster.url, timeout=30.0) as http:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                png = digit_pngs[len(statuses) % len(digit_pngs)][0]
                response = http.post(
                    "/scaling/v1/models/digits_cnn:predict", content=png, headers={"Content-Type": "image/png"}
                )
                statuses.append(response.status_code)

    workers = [threading.Thread(target=load) for _ in range(8)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: replicas("scaling", "digits_cnn") == 2, 90, "scale up to 2 replicas")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert statuses
    assert set(statuses) == {200}
    wait_for(lambda: replicas("scaling", "digits_cnn") == 1, 90, "scale down to 1 replica")
    cluster.deploy({MAIN_APP: cluster.apps[MAIN_APP]})
