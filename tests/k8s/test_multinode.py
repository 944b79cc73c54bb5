"""The chart's serveConfigV2 really runs on a multi-node Ray cluster, replicas on the worker.

The cluster mirrors the chart: a head started with `--num-cpus 0` (no replicas) and a worker
node joined with `ray start --address`, both on 127.0.0.1, with Ray token auth on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deployments.auth import hash_key
from deployments.ray_env import host_ports_of_its_own
from tests.k8s.conftest import rayservice, render_module

RAY = str(Path(sys.executable).parent / "ray")
DRIVER = Path(__file__).with_name("multinode_driver.py")
API_KEY = "vmk_" + secrets.token_urlsafe(32)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node_ports() -> list[str]:
    # Two nodes on one host: every per-node port must differ from the other node's.
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


def _start(args: list[str], env: dict[str, str]) -> int:
    """Run `ray start` in a new process group; the group id lets teardown stop only this node."""
    proc = subprocess.Popen(
        [RAY, "start", *args],
        # Each node's Serve ports are its own, as in its own pod.
        env=env | host_ports_of_its_own(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{out[-3000:]}")
    return proc.pid


@pytest.fixture(scope="module")
def multinode_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        # As the chart's Secret does: the API key store, in every Ray node's environment.
        "VISION_MAAS_API_KEYS": json.dumps(
            {"tenants": [{"name": "tests", "key_sha256": [hash_key(API_KEY)], "models": ["digits_cnn"]}]}
        ),
    }
    temp = tempfile.mkdtemp(prefix="vmray", dir="/tmp")  # short: Ray's socket paths are length-limited
    gcs = free_port()
    dashboard = free_port()
    groups: list[int] = []
    try:
        groups.append(
            _start(
                [
                    "--head",
                    "--node-ip-address=127.0.0.1",
                    f"--port={gcs}",
                    "--num-cpus=0",
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}",
                    f"--ray-client-server-port={free_port()}",
                    f"--temp-dir={temp}",
                    "--disable-usage-stats",
                    *_node_ports(),
                ],
                env,
            )
        )
        groups.append(
            _start(
                [
                    f"--address=127.0.0.1:{gcs}",
                    "--node-ip-address=127.0.0.1",
                    "--num-cpus=12",  # logical: the chart gives each of the 7 small models a whole CPU
                    "--disable-usage-stats",
                    *_node_ports(),
                ],
                env,
            )
        )
        # Name this cluster explicitly: another local Ray cluster may be running beside it.
        yield (
            f"127.0.0.1:{gcs}",
            env | {"RAY_ADDRESS": f"127.0.0.1:{gcs}", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"},
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, sig)
            time.sleep(2)
        shutil.rmtree(temp, ignore_errors=True)


def test_rendered_serve_config_answers_on_a_multi_node_cluster_with_replicas_on_the_worker(
    multinode_cluster: tuple[str, dict[str, str]], tmp_path: Path, digit_pngs: list[tuple[bytes, int]]
) -> None:
    address, env = multinode_cluster
    config = yaml.safe_load(rayservice(render_module.render())["spec"]["serveConfigV2"])
    config_path = tmp_path / "serve_config_v2.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    driver = subprocess.run(
        [sys.executable, str(DRIVER), address, str(config_path), str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    lines = [line for line in driver.stdout.splitlines() if line.startswith("{")]
    failure = driver.stdout[-2000:] + driver.stderr[-3000:]
    assert driver.returncode == 0, failure
    assert lines, failure
    report: dict[str, Any] = json.loads(lines[-1])

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as anonymous:
        assert anonymous.get("/v1/models").status_code == 401
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0, headers=auth) as http:
        for png, label in digit_pngs[:5]:
            response = http.post("/v1/models/digits_cnn:predict", content=png, headers={"Content-Type": "image/png"})
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["labels"][0]["label"] == str(label)
        assert [m["name"] for m in http.get("/v1/models").json()["models"]] == ["digits_cnn"]

    assert len(report["worker_nodes"]) == 1
    replicas = report["replicas"]  # actor name SERVE_REPLICA::<app>#<deployment>#<id> -> node id
    served = {m["name"] for m in config["applications"][0]["args"]["models"]}
    assert {name.split("#")[1] for name in replicas} == {"Ingress", "RateLimiter", *served}
    assert set(replicas.values()) == {report["worker_nodes"][0]}  # models, ingress and rate limiter
    assert report["head_node"] not in replicas.values()
