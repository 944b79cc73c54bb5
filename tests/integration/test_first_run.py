"""A first `make serve`: the shipped config schedules on 2 cores with API keys on, and a config that
cannot start says why on the console.

The slow tests run the Makefile's serve recipe (`python -m deployments.announce CONFIG -- serve run
CONFIG`, with the Makefile's exports) on a copy of the shipped config in a temporary folder: a Ray
cluster of their own, on free ports, whose processes they stop themselves; the session's cluster
(tests/conftest.py) is never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from deployments.app import INGRESS_OPTIONS, LIMITER_OPTIONS, MODEL_OPTIONS, TRAINING_OPTIONS
from deployments.args import TrainingArgs
from deployments.ray_env import ONE_MACHINE_ENV, THROUGHPUT_ENV, host_ports_of_its_own
from tests.serve_cluster import DEFAULT_CONFIG, REPO, free_port

CORES = 2.0
IMAGENET_CONFIG = REPO / "deployments" / "serve_config.imagenet.yaml"
SERVE = str(Path(sys.executable).parent / "serve")
# The Makefile's exports for `make serve` (tests/unit/test_ray_env.py keeps THROUGHPUT_ENV equal to them).
# Ctrl-C drains the ingress for 2 s (ONE_MACHINE_ENV), then stops Serve and Ray: a few seconds
# here; with Ray's 30 s cluster drain window it took over 30.
CTRL_C_BOUND_S = 25.0
MAKE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", **THROUGHPUT_ENV, **ONE_MACHINE_ENV}
EXPLAIN_WITHIN_S = 30.0


def _cpus(deployment: dict[str, Any]) -> float:
    """What one replica asks, with the options the config leaves to the code's defaults."""
    default = INGRESS_OPTIONS if deployment["name"] == "Ingress" else MODEL_OPTIONS
    return float((default | deployment)["ray_actor_options"]["num_cpus"])


@pytest.mark.parametrize("path", [DEFAULT_CONFIG, IMAGENET_CONFIG], ids=lambda p: p.name)
def test_shipped_config_leaves_room_on_two_cores_for_api_keys_and_a_training_job_or_a_second_replica(
    path: Path,
) -> None:
    (app,) = yaml.safe_load(path.read_text())["applications"]
    replicas = sum(_cpus(d) * d.get("num_replicas", 1) for d in app["deployments"])
    limiter = float(LIMITER_OPTIONS["ray_actor_options"]["num_cpus"])
    training = TrainingArgs.model_validate(app["args"].get("training", {}))
    if training.enabled:
        # Training's job queue and one job's workers, beside the replicas (and StoreModels, listed).
        assert "StoreModels" in {d["name"] for d in app["deployments"]}
        extra = float(TRAINING_OPTIONS["ray_actor_options"]["num_cpus"]) + training.workers * training.cpus_per_worker
    else:
        extra = max(_cpus(d) for d in app["deployments"] if d["name"] != "Ingress")
    assert replicas + limiter + extra <= CORES


class FirstRun:
    """`make serve`'s command on `config`, in its own process group; every process it starts is recorded."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str]) -> None:
        self.stdout = workdir / "stdout.txt"
        self.stderr = workdir / "stderr.txt"
        self.started = time.monotonic()
        # The child holds its own copies of the two files; ours close at once.
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deployments.announce", str(config), "--", SERVE, "run", str(config)],
                cwd=REPO,
                env=env,
                start_new_session=True,
                stdout=out,
                stderr=err,
            )
        self.seen: dict[int, psutil.Process] = {}

    def record(self) -> None:
        """Remember the processes started so far (Ray's, under `serve run`), to stop exactly those."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)

    def wait_for(self, pattern: str, stream: str, timeout_s: float) -> float:
        """Seconds from the start until `pattern` appears on stdout or stderr; fails on timeout or exit."""
        path = self.stdout if stream == "stdout" else self.stderr
        deadline = self.started + timeout_s
        while time.monotonic() < deadline:
            self.record()
            if re.search(pattern, path.read_text()):
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(
            f"{pattern!r} not on {stream} after {time.monotonic() - self.started:.0f}s:\n{self.output()}"
        )

    def output(self) -> str:
        return f"--- stdout\n{self.stdout.read_text()[-4000:]}\n--- stderr\n{self.stderr.read_text()[-6000:]}"

    def interrupt(self, timeout_s: float = 200.0) -> int:
        """Ctrl-C: SIGINT to the foreground process group, as a terminal sends it."""
        self.record()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"Ctrl-C did not stop the run within {timeout_s:.0f}s; {self.sigint_states()}\n{self.output()}"
            ) from None

    def sigint_states(self) -> str:
        """How the run's own processes (the announcer, `serve run`) stand towards SIGINT now."""
        states = []
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(self.proc.pid)
            for proc in [top, *top.children()]:
                status = dict(
                    line.split(":\t", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                )
                # Bit 1 of each mask is SIGINT: blocked, ignored, caught by a handler.
                flags = {name: int(status[name].strip(), 16) >> 1 & 1 for name in ("SigBlk", "SigIgn", "SigCgt")}
                states.append(f"{proc.pid} {' '.join(proc.cmdline()[:3])} ({proc.status()}) SIGINT {flags}")
        return "; ".join(states)

    def alive(self, grace_s: float = 30.0) -> list[str]:
        """The recorded processes still running after `grace_s`."""
        deadline = time.monotonic() + grace_s
        while True:
            left = [p for p in self.seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            if not left or time.monotonic() > deadline:
                return [f"{p.pid} {p.name()}" for p in left]
            time.sleep(1)

    def stops_on_ctrl_c(self, within_s: float | None = CTRL_C_BOUND_S) -> None:
        """Ctrl-C stops `serve run`, Serve and Ray with status 0: nothing the run started is left;
        with `within_s`, sooner than that (Ray's 30 s cluster drain would not be)."""
        started = time.monotonic()
        assert self.interrupt() == 0, self.output()
        stopped_s = time.monotonic() - started
        assert self.alive() == []
        if within_s is not None:
            assert stopped_s < within_s, f"Ctrl-C took {stopped_s:.1f}s:\n{self.output()}"

    def kill(self) -> None:
        """Stop everything this run started, and nothing else."""
        self.record()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)


@pytest.fixture
def first_run(tmp_path: Path) -> Iterator[Any]:
    runs: list[FirstRun] = []

    def start(app_changes: dict[str, Any], env: dict[str, str] | None = None) -> tuple[FirstRun, str]:
        config = yaml.safe_load(DEFAULT_CONFIG.read_text())
        port = free_port()
        config["http_options"]["port"] = port
        (app,) = config["applications"]
        for key, value in app_changes.items():
            app[key] = value(app[key]) if callable(value) else value
        path = tmp_path / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VISION_MAAS_") and k != "RAY_ADDRESS"}
        # Ports of its own where Serve has per-host defaults: another local cluster (the session's,
        # a benchmark's) may hold them, and its HAProxy would then answer with the other's app.
        run = FirstRun(path, tmp_path, environ | MAKE_ENV | host_ports_of_its_own() | (env or {}))
        runs.append(run)
        return run, f"http://127.0.0.1:{port}"

    yield start
    for run in runs:
        # Shown by pytest only when the test failed.
        print(run.output())
        run.kill()


def _with_api_keys(keys_file: Path) -> Any:
    def change(args: dict[str, Any]) -> dict[str, Any]:
        return args | {"auth": {"enabled": True, "keys_file": str(keys_file)}}

    return change


@pytest.mark.slow
def test_shipped_config_with_api_keys_on_starts_on_two_cores_and_answers_401_then_200(
    first_run: Any, tmp_path: Path, digit_pngs: list[tuple[bytes, int]]
) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "deployments.auth", "new-key", "--tenant", "first-run", "--models", "digits_cnn"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(made.stdout)
    (key,) = re.findall(r"vmk_\S+", made.stderr)
    run, url = first_run({"args": _with_api_keys(keys_file)})
    ready_s = run.wait_for(r"vision-maas is ready at http://127\.0\.0\.1:\d+/", "stdout", 420)
    print(f"ready {ready_s:.0f}s after start")
    # Nothing waited for CPUs (Serve's own "taken more than 30s" may appear on a busy machine).
    assert not re.search(r"replicas? waiting for \{", run.stderr.read_text()), run.output()
    png, label = digit_pngs[0]
    predict = f"{url}/v1/models/digits_cnn:predict"
    with httpx.Client(timeout=60.0, headers={"Content-Type": "image/png"}) as http:
        anonymous = http.post(predict, content=png)
        assert anonymous.status_code == 401, anonymous.text
        answer = http.post(predict, content=png, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["labels"][0]["label"] == str(label)
    run.stops_on_ctrl_c()


@pytest.mark.slow
def test_replica_asking_more_cpus_than_the_machine_has_is_explained_on_the_console_within_30s(first_run: Any) -> None:
    def one_greedy_model(deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [dict(d) for d in deployments if d["name"] in ("Ingress", "digits_cnn")]
        kept[1]["ray_actor_options"] = {"num_cpus": 64}
        return kept

    def one_model(args: dict[str, Any]) -> dict[str, Any]:
        return args | {"models": [{"name": "digits_cnn"}], "training": {"enabled": False}}

    run, _ = first_run({"args": one_model, "deployments": one_greedy_model})
    # Starting Ray itself is out of the announcer's hands (20 s on a busy 2-core machine).
    ray_up_s = run.wait_for(r"Started a local Ray instance", "stderr", 120)
    explained_s = run.wait_for(
        r"digits_cnn: 1 replica waiting for \{CPU: 64\.0\}; cluster has CPU \d+\.\d+, [\d.]+ free "
        r"\(never enough: more than the whole cluster has\)",
        "stderr",
        ray_up_s + EXPLAIN_WITHIN_S,
    )
    print(f"Ray up {ray_up_s:.0f}s, explained {explained_s:.0f}s after start")
    assert "vision-maas: its 2 replicas ask for {CPU: 64.2} in all" in run.stderr.read_text()
    assert run.proc.poll() is None  # still waiting: the user decides
    # A replica that was never scheduled holds Serve's graceful shutdown for its own
    # graceful_shutdown_timeout_s (20 s), whatever the ingress drain: no bound on this one.
    run.stops_on_ctrl_c(within_s=None)


@pytest.mark.slow
def test_application_that_fails_to_deploy_is_explained_and_stops_serve_run_with_a_nonzero_status(
    first_run: Any,
) -> None:
    # API keys on with no key store: build_app refuses to start, naming what is missing.
    def keys_on_without_store(args: dict[str, Any]) -> dict[str, Any]:
        return args | {"models": [{"name": "digits_cnn"}], "auth": {"enabled": True}}

    def one_model(deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [d for d in deployments if d["name"] in ("Ingress", "digits_cnn")]

    run, _ = first_run({"args": keys_on_without_store, "deployments": one_model})
    run.wait_for(r"vision-maas: DEPLOY_FAILED", "stderr", 120)
    assert run.proc.wait(90) == 1, run.output()
    err = run.stderr.read_text()
    assert "authentication is on but no API keys are configured" in err
    assert "stopping serve run" in err
    assert run.alive() == []
