"""A real local Ray cluster with Serve on 127.0.0.1, deployed from Serve config dicts the way
`serve run deployments/serve_config.yaml` deploys them (the session fixtures are in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import copy
import functools
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from ray import serve
from ray.serve._private import api as serve_api
from ray.serve.schema import ServeDeploySchema

from deployments.topology import CATALOGUE_DEPLOYMENTS, expand_app, model_app_name

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "deployments" / "serve_config.yaml"
MAIN_APP = "vision-maas"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_app(app: str, deployment: str) -> str:
    """The Serve application running `deployment` of the configured application `app`: a model's
    deployment has its own (deployments.topology); the ingress and the rate limiter are the catalogue's."""
    return app if deployment in CATALOGUE_DEPLOYMENTS else model_app_name(app, deployment)


_handle_loop: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop for the test process's handles, running for the whole session in a thread."""
    global _handle_loop
    if _handle_loop is None:
        _handle_loop = asyncio.new_event_loop()
        threading.Thread(target=_handle_loop.run_forever, name="serve-handles", daemon=True).start()
    return _handle_loop


def call_deployment(app: str, deployment: str, method: str, *args: Any, timeout_s: float = 60.0) -> Any:
    """One call of a deployment's method from test code, as another deployment calls it.

    Serve's throughput-optimized data path (deployments/ray_env.py) routes a handle's calls on the
    caller's event loop, and that loop must keep running while the handle lives: every call runs on
    one loop that lives as long as the test session.
    """

    async def call() -> Any:
        handle = serve.get_deployment_handle(deployment, app_name=serve_app(app, deployment))
        return await getattr(handle, method).remote(*args)

    return asyncio.run_coroutine_threadsafe(call(), _loop()).result(timeout_s)


class ServeCluster:
    """The session's Ray + Serve; `deploy` replaces the set of applications declaratively."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        # As the shipped config: keep-alive longer than any client idles between requests.
        self._client = serve_api.serve_start(
            http_options={"host": "127.0.0.1", "port": port, "keep_alive_timeout_s": 75}
        )
        self.apps: dict[str, dict[str, Any]] = {}

    def deploy(self, apps: dict[str, dict[str, Any]], timeout_s: float = 240.0) -> None:
        """Deploy exactly `apps` (name -> application config, as a config authors it: expanded to
        one application per model as `make serve` does) and wait until all are RUNNING."""
        expanded = [one for name, app in apps.items() for one in expand_app(dict(app, name=name))]
        schema = ServeDeploySchema.model_validate({"applications": expanded})
        self._client.deploy_apps(schema, _blocking=False)
        self.apps = copy.deepcopy(apps)
        names = {app["name"] for app in expanded}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = serve.status().applications
            states = {n: status[n].status if n in status else "MISSING" for n in names}
            if any(s == "DEPLOY_FAILED" for s in states.values()):
                messages = {
                    n: [status[n].message] + [d.message for d in status[n].deployments.values() if d.message]
                    for n in names
                    if n in status
                }
                raise RuntimeError(f"deploy failed: {messages}")
            if all(s == "RUNNING" for s in states.values()) and set(status) == names:
                return
            time.sleep(0.5)
        raise TimeoutError(f"applications not running after {timeout_s}s: {states}")


# The models the auth, fault, scaling and malformed-input tests exercise; their extra
# applications deploy only these, so several fit the test cluster's CPUs at once.
CORE_MODELS = ("digits_cnn", "resnet18")


def default_app_config(only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The shipped default config's application plus a random-weights torchvision classifier;
    with `only`, just those models."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    app = config["applications"][0]
    app.pop("name")
    app["args"]["models"].append({"name": "resnet18", "weights": "random"})
    # As on the cluster (the chart's values): JSON logs, which the observability tests parse.
    app["logging_config"] = {"encoding": "JSON", "log_level": "INFO"}
    # A 2-core CI machine: small CPU shares so every replica schedules; batching as shipped,
    # except digits_cnn, whose longer wait and fixed cap (not measured) let the batching tests fill
    # batches of up to 16.
    overrides: dict[str, dict[str, Any]] = {
        "Ingress": {"ray_actor_options": {"num_cpus": 0.25}},
        "digits_cnn": {
            "ray_actor_options": {"num_cpus": 0.5},
            "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.05, "measure": False},
        },
    }
    app["deployments"] = [
        {
            "name": d["name"],
            **overrides.get(d["name"], {k: d[k] for k in ("ray_actor_options", "user_config") if k in d}),
        }
        for d in app["deployments"]
    ]
    app["deployments"].append(
        {
            "name": "resnet18",
            "ray_actor_options": {"num_cpus": 1},
            "user_config": {"max_requests": 80, "max_batch_size": 4, "batch_wait_timeout_s": 0.01},
        }
    )
    # Training as shipped, in a store of the test session's own (never the user's).
    app["args"]["training"] |= {"store": str(session_store())}
    if only is not None:
        app["args"]["models"] = [m for m in app["args"]["models"] if m["name"] in only]
        app["deployments"] = [d for d in app["deployments"] if d["name"] in (*only, *CATALOGUE_DEPLOYMENTS)]
    return app


@functools.cache
def session_store() -> Path:
    """The model store of this test session's applications: a fresh temporary folder."""
    return Path(tempfile.mkdtemp(prefix="vision-maas-store-"))
