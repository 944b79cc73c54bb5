"""The chart's high-availability values: the head's GCS killed under load, its state kept in Redis.

As KubeRay's own end-to-end test of GCS fault tolerance: the GCS process of the head is killed
while a client sends `:predict` to the Serve port of the worker; requests keep being answered (none
failed with the client's retries), the head comes back with its state, and accepts a redeploy.
"""

from __future__ import annotations

import copy
import json
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from maas.client import ApiError, RetryPolicy, VisionClient
from tests.container import image as img
from tests.container import pods
from tests.container.cluster import MODEL, network, one_model_values, pod_cluster, redis_server
from tests.container.conftest import BuiltImage, wait_until

HA_VALUES = yaml.safe_load((Path(pods.__file__).parents[2] / "k8s/helm/vision-maas/ci/ha-values.yaml").read_text())
RATE_PER_S = 5  # per client; two clients: 10 requests/s
RESULTS = img.CACHE / "gcs_fault_tolerance.json"


class Load:
    """A client sending `:predict` at a fixed rate in a thread, counting answers and failures."""

    def __init__(self, send: Callable[[], None]) -> None:
        self.send = send
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.send()
                self.answered += 1
            except (httpx.HTTPError, ApiError, AssertionError) as error:
                self.failures.append(f"{time.monotonic():.1f} {type(error).__name__}: {str(error)[:120]}")
            next_at += 1 / RATE_PER_S
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def kill_gcs(head: str) -> None:
    """SIGKILL the head container's gcs_server, from inside it (its own user; no procps needed)."""
    script = 'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = gcs_server ] && kill -9 "${p#/proc/}" && echo killed; done'
    killed = img.podman("exec", head, "bash", "-c", script, check=False)
    assert "killed" in killed.stdout, killed.stdout + killed.stderr


def test_gcs_killed_under_load_recovers_from_redis_serving_throughout_and_accepts_a_redeploy(
    built_image: BuiltImage, digit_pngs: list[tuple[bytes, int]]
) -> None:
    password = secrets.token_hex(16)
    redis_secret = HA_VALUES["gcsFaultTolerance"]["redisPasswordSecret"]
    with network() as net, redis_server(net, password) as redis_address:
        ha = copy.deepcopy(HA_VALUES["gcsFaultTolerance"]) | {"redisAddress": redis_address}
        values = one_model_values({"gcsFaultTolerance": ha})
        extra = {(redis_secret["name"], redis_secret["key"]): password}
        with pod_cluster(built_image.ref, net, values, secrets_extra=extra) as cluster:
            config = yaml.safe_load(cluster.service["spec"]["serveConfigV2"])
            names = [app["name"] for app in config["applications"]]
            cluster.deploy(config)
            cluster.wait_running(names)
            png, label = digit_pngs[2]
            url = cluster.serve_urls["worker"]
            auth = {"Authorization": f"Bearer {cluster.api_key}"}
            retrying = VisionClient(url, api_key=cluster.api_key, timeout=10.0, retry=RetryPolicy(max_attempts=8))
            plain = httpx.Client(base_url=url, headers=auth, timeout=10.0)

            def with_retries() -> None:
                answer = retrying.predict(MODEL, png)
                assert answer["predictions"][0]["labels"][0]["label"] == str(label)

            def without_retries() -> None:
                response = plain.post(f"/v1/models/{MODEL}:predict", content=png, headers={"Content-Type": "image/png"})
                assert response.status_code == 200, response.status_code

            head = cluster.service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            restarts = int(img.podman("inspect", "--format", "{{.RestartCount}}", cluster.head).stdout.strip())
            with Load(with_retries) as retried, Load(without_retries) as unretried:
                time.sleep(5)
                killed_at = time.monotonic()
                kill_gcs(cluster.head)

                def head_back() -> bool:
                    count = int(img.podman("inspect", "--format", "{{.RestartCount}}", cluster.head).stdout.strip())
                    return count > restarts and pods.probe(cluster.head, head, "readinessProbe")

                wait_until(head_back, 240, f"the head restarted and ready\n{cluster.logs()}", poll_s=2.0)
                recovered_s = time.monotonic() - killed_at
                cluster.wait_running(names)
                time.sleep(5)
            retrying.close()
            plain.close()

            # The cluster's state came back from Redis: the worker is the same node, never restarted.
            alive = [n for n in cluster.nodes() if n["state"] == "ALIVE"]
            assert sorted(n["node_ip"] for n in alive) == sorted([cluster.head_ip, cluster.worker_ip])
            # A redeploy after the recovery: a new batching setting reaches the running model.
            changed = copy.deepcopy(config)
            model_app = next(a for a in changed["applications"] if a["name"].endswith(MODEL))
            model_app["deployments"][0]["user_config"]["max_batch_size"] = 8
            cluster.deploy(changed)
            details = cluster.wait_running(names)
            deployment = details["applications"][model_app["name"]]["deployments"][MODEL]
            assert deployment["deployment_config"]["user_config"]["max_batch_size"] == 8
            with httpx.Client(base_url=url, headers=auth, timeout=30.0) as http:
                response = http.post(f"/v1/models/{MODEL}:predict", content=png, headers={"Content-Type": "image/png"})
                assert response.status_code == 200, response.text

    report: dict[str, Any] = {
        "rate_per_s": 2 * RATE_PER_S,
        "head_back_s": round(recovered_s, 1),
        "with_retries": {"answered": retried.answered, "failed": len(retried.failures)},
        "without_retries": {"answered": unretried.answered, "failed": len(unretried.failures)},
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    assert retried.answered > 0
    assert unretried.answered > 0
    assert retried.failures == [], retried.failures[:5]
