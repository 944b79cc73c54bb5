"""A Ray cluster of two containers from the rendered chart: the head pod and one worker pod."""

from __future__ import annotations

import contextlib
import copy
import json
import random
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.auth import hash_key
from tests.container import image as img
from tests.container import pods
from tests.container.conftest import wait_until
from tests.k8s.conftest import rayservice, render_module
from tests.serve_cluster import free_port

MODEL = "digits_cnn"
START_S = 180
DEPLOY_S = 300
HEAD_HOST, WORKER_HOST, REDIS_HOST = 10, 11, 12


def one_model_values(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart's values serving `MODEL` alone, so its replicas fit the one worker's CPU limit."""
    values = yaml.safe_load((render_module.CHART / "values.yaml").read_text())
    serve = copy.deepcopy(values["serve"])
    (app,) = serve["applications"]
    app["args"]["models"] = [{"name": MODEL}]
    app["deployments"] = [d for d in app["deployments"] if d["name"] in ("Ingress", MODEL)]
    return {"serve": serve} | (extra or {})


@dataclass(frozen=True)
class Network:
    """A podman network of the test's own, with fixed addresses (a restarted head keeps its own)."""

    name: str
    subnet: str

    def address(self, host: int) -> str:
        return f"{self.subnet.rsplit('.', 1)[0]}.{host}"


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A bridge network on a /24 that no route of this host covers yet; removed afterwards."""
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    rng = random.Random()
    subnet = ""
    for _ in range(50):
        subnet = f"10.{rng.randrange(90, 250)}.{rng.randrange(256)}.0"
        if subnet.rsplit(".", 1)[0] + "." not in routes:
            break
    name = f"vision-maas-test-{secrets.token_hex(4)}"
    img.podman("network", "create", "--subnet", f"{subnet}/24", name)
    try:
        yield Network(name, subnet)
    finally:
        img.podman("network", "rm", "--force", name, check=False, timeout=60)


@contextlib.contextmanager
def redis_server(net: Network, password: str) -> Iterator[str]:
    """Debian's redis-server as the cluster's external store, reachable on the test network: a
    sleeping container holds the address and the host's redis-server listens in its network
    namespace. Yields `host:port`."""
    holder = f"{net.name}-redis"
    address = net.address(REDIS_HOST)
    img.podman(
        "run", "--detach", "--name", holder, "--network", net.name, "--ip", address, *img.ULIMITS,
        img.BASE_IMAGE, "sleep", "infinity",
    )  # fmt: skip
    server: subprocess.Popen[bytes] | None = None
    try:
        pid = img.podman("inspect", "--format", "{{.State.Pid}}", holder).stdout.strip()
        with tempfile.TemporaryDirectory(prefix="vmredis") as data:
            config = f'bind {address}\nport 6379\nrequirepass {password}\ndir {data}\nsave ""\nappendonly no\n'
            server = subprocess.Popen(
                ["nsenter", f"--net=/proc/{pid}/ns/net", "redis-server", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert server.stdin is not None
            server.stdin.write(config.encode())
            server.stdin.close()

            def answers() -> bool:
                ping = subprocess.run(
                    [
                        "nsenter",
                        f"--net=/proc/{pid}/ns/net",
                        "redis-cli",
                        "-h",
                        address,
                        "--no-auth-warning",
                        "-a",
                        password,
                        "ping",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                return ping.stdout.strip() == "PONG"

            wait_until(answers, 30, "redis-server answering")
            yield f"{address}:6379"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        img.remove_container(holder)


@dataclass
class PodCluster:
    """The containers, their addresses on the host, and what the chart's Secrets would hold."""

    head: str
    worker: str
    head_ip: str
    worker_ip: str
    dashboard: str
    serve_urls: dict[str, str]
    api_key: str
    ray_token: str
    service: dict[str, Any]

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ray_token}"}

    def deploy(self, config: dict[str, Any]) -> None:
        """PUT the Serve config to the head's dashboard, as KubeRay deploys serveConfigV2."""
        response = httpx.put(f"{self.dashboard}/api/serve/applications/", json=config, headers=self._auth(), timeout=60)
        assert response.status_code == 200, response.text

    def serve_details(self) -> dict[str, Any]:
        response = httpx.get(f"{self.dashboard}/api/serve/applications/", headers=self._auth(), timeout=30)
        assert response.status_code == 200, response.text
        details: dict[str, Any] = response.json()
        return details

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's nodes as the head's state API lists them."""
        response = httpx.get(f"{self.dashboard}/api/v0/nodes", headers=self._auth(), timeout=30)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["data"]["result"]["result"]
        return found

    def wait_running(self, names: list[str], timeout_s: float = DEPLOY_S) -> dict[str, Any]:
        """Serve's details once every named application runs; fails naming a failed one."""
        found: dict[str, Any] = {}

        def running() -> bool:
            found.update(self.serve_details())
            apps = found.get("applications", {})
            failed = {n: apps[n].get("message") for n in names if apps.get(n, {}).get("status") == "DEPLOY_FAILED"}
            assert not failed, failed
            return all(apps.get(n, {}).get("status") == "RUNNING" for n in names)

        wait_until(running, timeout_s, f"applications {names} running\n{self.logs()}", poll_s=2.0)
        return found

    def logs(self) -> str:
        return "".join(
            f"--- {name}\n{img.podman('logs', '--tail', '40', name, check=False).stdout[-3000:]}"
            for name in (self.head, self.worker)
        )


def kuberay_env(cluster: dict[str, Any], head: bool, secret_values: dict[tuple[str, str], str]) -> dict[str, str]:
    """What KubeRay adds to a Ray container's environment for `gcsFaultToleranceOptions`."""
    options = cluster.get("gcsFaultToleranceOptions")
    if not options:
        return {}
    if not head:
        return {"RAY_gcs_rpc_server_reconnect_timeout_s": "600"}
    env = {"RAY_REDIS_ADDRESS": options["redisAddress"], "RAY_external_storage_namespace": "vision-maas-tests"}
    if "redisPassword" in options:
        ref = options["redisPassword"]["valueFrom"]["secretKeyRef"]
        env["REDIS_PASSWORD"] = secret_values[(ref["name"], ref["key"])]
    return env


@contextlib.contextmanager
def pod_cluster(
    image: str, net: Network, values: dict[str, Any], secrets_extra: dict[tuple[str, str], str] | None = None
) -> Iterator[PodCluster]:
    """The rendered chart's head and worker templates run as two containers on `net`."""
    service = rayservice(render_module.render(values))
    cluster = service["spec"]["rayClusterConfig"]
    head_group = cluster["headGroupSpec"]
    (worker_group,) = cluster["workerGroupSpecs"]
    api_key = "vmk_" + secrets.token_urlsafe(32)
    # What the operator and the chart's Secrets provide: Ray's token when authOptions asks for it
    # (KubeRay generates one per cluster) and the API key store.
    token = secrets.token_hex(32)
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if cluster.get("authOptions") else {}
    keys = {"tenants": [{"name": "tests", "key_sha256": [hash_key(api_key)], "models": [MODEL]}]}
    secret_values = {("vision-maas-api-keys", "keys.yaml"): json.dumps(keys)} | (secrets_extra or {})
    head, worker = f"{net.name}-head", f"{net.name}-worker"
    head_ip, worker_ip = net.address(HEAD_HOST), net.address(WORKER_HOST)
    ft = bool(cluster.get("gcsFaultToleranceOptions"))
    started: list[str] = []
    volumes = Path(tempfile.mkdtemp(prefix="vmpods"))
    try:
        dashboard, head_serve, worker_serve = free_port(), free_port(), free_port()
        head_env = auth_env | kuberay_env(cluster, True, secret_values)
        head_options = [
            "--ip", head_ip,
            "--publish", f"127.0.0.1:{dashboard}:{pods.DASHBOARD_PORT}",
            "--publish", f"127.0.0.1:{head_serve}:8000",
            # A pod's restartPolicy Always: with GCS fault tolerance the head restarts in place.
            *(["--restart", "always"] if ft else []),
            *pods.run_args(head_group["template"], head_env, secret_values, volumes / "head"),
        ]  # fmt: skip
        params = {"redis-password": "$REDIS_PASSWORD"} if ft and "REDIS_PASSWORD" in head_env else {}
        started.append(head)
        pods.run(head, net.name, head_options, image, pods.ray_start(head_group, head=True, extra=params))
        head_container = head_group["template"]["spec"]["containers"][0]
        wait_until(lambda: pods.probe(head, head_container, "readinessProbe"), START_S, "the head's readiness probe")
        worker_env = auth_env | kuberay_env(cluster, False, secret_values)
        worker_options = [
            "--ip", worker_ip,
            "--publish", f"127.0.0.1:{worker_serve}:8000",
            *pods.run_args(worker_group["template"], worker_env, secret_values, volumes / "worker"),
        ]  # fmt: skip
        start = pods.ray_start(worker_group, head=False, head_address=f"{head_ip}:{pods.GCS_PORT}")
        started.append(worker)
        pods.run(worker, net.name, worker_options, image, start)
        yield PodCluster(
            head=head,
            worker=worker,
            head_ip=head_ip,
            worker_ip=worker_ip,
            dashboard=f"http://127.0.0.1:{dashboard}",
            serve_urls={"head": f"http://127.0.0.1:{head_serve}", "worker": f"http://127.0.0.1:{worker_serve}"},
            api_key=api_key,
            ray_token=token,
            service=service,
        )
    finally:
        for name in reversed(started):
            img.remove_container(name)
        shutil.rmtree(volumes, ignore_errors=True)
