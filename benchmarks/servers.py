"""Start, probe and stop the benchmarked servers; the CPU time of a server's whole process tree."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from benchmarks.pipeline import weights_for
from deployments.args import BatchConfig
from deployments.image_model import THREADS_ENV
from deployments.ray_env import CLASSIC_ENV, ONE_MACHINE_ENV, THROUGHPUT_ENV, host_ports_of_its_own
from deployments.topology import expand

REPO = Path(__file__).resolve().parents[1]
# vision-maas as shipped (one application per model: HAProxy straight to the model's replica),
# without batching, as one application (HAProxy -> ingress replica -> gRPC -> model replica, as
# before deployments/topology.py), and on Ray Serve's default Python proxy and actor calls ("classic").
SERVERS = (
    "vision-maas",
    "vision-maas-nobatch",
    "vision-maas-twohop",
    "vision-maas-classic",
    "fastapi",
    "litserve",
    "torchserve",
    "rayserve-minimal",
)


@dataclass
class Server:
    """How to run one server for one model, and the request a load generator sends it."""

    name: str
    command: list[str]
    url: str
    content_type: str
    json_base64: bool = False  # LitServe's pattern: the image base64 in a JSON body
    env: dict[str, str] = field(default_factory=dict)

    def body(self, image: bytes) -> tuple[bytes, str]:
        """The request body and its content type for `image`."""
        if self.json_base64:
            return json.dumps({"image": base64.b64encode(image).decode()}).encode(), "application/json"
        return image, self.content_type


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (all held open until each is chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def vision_maas_config(
    model: str,
    port: int,
    batching: dict[str, dict[str, Any]],
    num_cpus: float,
    threads: int,
    replicas: int = 1,
    one_hop: bool = True,
) -> dict[str, Any]:
    """A Serve config serving `model` once per entry of `batching` (served name -> user_config):
    expanded to one application per model as `make serve` runs it, or with `one_hop` False the
    one application of before (an ingress calling the models over handles).

    With several entries each replica gets a share of the CPUs but `threads` torch threads: they
    are measured one at a time, each then using the whole machine.
    """
    weights = weights_for(model)
    models: list[dict[str, Any]] = []
    deployments: list[dict[str, Any]] = [
        # The ingress only routes; the model replicas get the cores (torch threads follow).
        {"name": "Ingress", "ray_actor_options": {"num_cpus": 0}}
    ]
    for name, user_config in batching.items():
        models.append({"name": name, "model": model} | ({} if weights is None else {"weights": weights}))
        actor: dict[str, Any] = {"num_cpus": num_cpus}
        if len(batching) > 1:
            actor["runtime_env"] = {"env_vars": {THREADS_ENV: str(threads)}}
        deployments.append(
            {
                "name": name,
                "num_replicas": replicas,
                "ray_actor_options": actor,
                "user_config": {"max_requests": 1024} | user_config,
            }
        )
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": port, "keep_alive_timeout_s": 75},
        "logging_config": {"encoding": "TEXT", "log_level": "INFO"},
        "applications": [
            {
                "name": "vision-maas",
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "args": {"models": models, "auth": {"enabled": False}},
                "deployments": deployments,
            }
        ],
    }
    return expand(config) if one_hop else config


def write_config(config: dict[str, Any]) -> Path:
    """`config` as a YAML file for `serve run`."""
    path = Path(tempfile.mkdtemp(prefix="bench-")) / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def serve_command(config: Path) -> list[str]:
    """`serve run CONFIG` from this environment (what `make serve` runs), on a Ray of its own."""
    return [str(Path(sys.executable).with_name("serve")), "run", "--address", "local", str(config)]


# Every server's batch wait, unless a run says otherwise: the replicas' default.
BATCH_WAIT_S = BatchConfig().batch_wait_timeout_s


def make_server(
    name: str,
    model: str,
    port: int,
    threads: int,
    max_batch_size: int,
    wait_s: float = BATCH_WAIT_S,
    replicas: int = 1,
) -> Server:
    """The Server called `name` (one of SERVERS) for `model` on `port`.

    vision-maas, LitServe and TorchServe run `replicas` model workers with `threads` torch threads each; the
    hand-written FastAPI server is one process with `threads * replicas` threads; the minimal
    Ray Serve pattern keeps Ray's defaults (one replica, one CPU).
    """
    python = sys.executable
    base = f"http://127.0.0.1:{port}"
    if name.startswith("vision-maas"):
        batch = 1 if name == "vision-maas-nobatch" else max_batch_size
        user_config = {"max_batch_size": batch, "batch_wait_timeout_s": wait_s}
        one_hop = name != "vision-maas-twohop"
        config = write_config(
            vision_maas_config(model, port, {model: user_config}, threads, threads, replicas, one_hop=one_hop)
        )
        # Serve's per-host ports of its own: another cluster (`make serve`, the tests') may be running.
        env = (
            (CLASSIC_ENV if name == "vision-maas-classic" else THROUGHPUT_ENV)
            | ONE_MACHINE_ENV
            | host_ports_of_its_own()
        )
        return Server(name, serve_command(config), f"{base}/v1/models/{model}:predict", "image/jpeg", env=env)
    module = {
        "fastapi": "fastapi_server",
        "litserve": "litserve_server",
        "torchserve": "torchserve_server",
        "rayserve-minimal": "rayserve_minimal",
    }[name]
    command = [python, "-m", f"benchmarks.peers.{module}", "--model", model, "--port", str(port)]
    if name == "fastapi":
        command += ["--threads", str(threads * replicas)]
    if name == "litserve":
        command += ["--threads", str(threads), "--workers", str(replicas)]
        command += ["--max-batch-size", str(max_batch_size), "--batch-timeout", str(wait_s)]
    if name == "torchserve":
        # TorchServe's Python workers, each one model copy with `threads` torch threads; raw JPEG bodies.
        command += ["--workers", str(replicas), "--threads", str(threads)]
        command += ["--max-batch-size", str(max_batch_size), "--batch-timeout", str(wait_s)]
        return Server(name, command, f"{base}/predictions/{model}", "image/jpeg")
    # Ray Serve's minimal pattern keeps Ray's defaults, whatever the environment exports.
    env = CLASSIC_ENV if name == "rayserve-minimal" else {}
    return Server(name, command, f"{base}/predict", "image/jpeg", json_base64=name == "litserve", env=env)


class Running:
    """A started server process (its own process group, so stopping it stops everything it started)."""

    def __init__(self, server: Server, log: Path) -> None:
        self.server = server
        self.log = log
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **server.env}
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            server.command, cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started = time.monotonic()

    def wait_ready(self, image: bytes, timeout_s: float = 300.0) -> float:
        """Seconds from start to the first successful prediction (the cold start)."""
        body, content_type = self.server.body(image)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.server.name} exited with {self.process.returncode}; see {self.log}")
            try:
                response = httpx.post(self.server.url, content=body, headers={"Content-Type": content_type}, timeout=30)
                if response.status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.server.name} not ready after {timeout_s}s; see {self.log}")

    def processes(self) -> list[psutil.Process]:
        """The server's process and every descendant (Ray's GCS, raylet, workers, ... included)."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the whole process tree so far."""
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory by process name (model replicas are Ray workers named after their actor)."""
        out: dict[str, int] = {}
        for proc in self.processes():
            try:
                name = proc.name() if proc.name().startswith("ray::") else Path(proc.cmdline()[0]).name
                out[name] = out.get(name, 0) + proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        """SIGINT (Serve shuts down cleanly), then SIGKILL the group for anything left."""
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log_file.close()
