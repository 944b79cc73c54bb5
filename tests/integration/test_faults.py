"""Faults under load on 127.0.0.1: replicas killed, redeploys, overload. Bounded in time.

Each run prints its figures (requests sent, failed, time to a serving replacement), which
docs/security.md reports (Backpressure, timeouts and faults).
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from maas import ApiError, RetryPolicy, VisionClient
from tests.conftest import encode
from tests.integration.conftest import CORE_MODELS, MAIN_APP, ServeCluster, default_app_config
from tests.serve_cluster import serve_app

pytestmark = pytest.mark.slow
APP = "faults"
RATE = 20.0


@dataclass
class LoadReport:
    """Outcomes of one load stream: 'ok', or the failure's status or exception name."""

    outcomes: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, at: float, outcome: str) -> None:
        with self.lock:
            self.outcomes.append((at, outcome))

    def counts(self) -> Counter[str]:
        return Counter(outcome for _, outcome in self.outcomes)

    def failures(self) -> dict[str, int]:
        """Failed outcomes by kind (status or exception name)."""
        return {outcome: n for outcome, n in self.counts().items() if outcome != "ok"}

    def failed(self) -> int:
        return sum(self.failures().values())


def run_load(
    sends: dict[str, Callable[[], str]], rate: float, seconds: float, side: Callable[[], None]
) -> dict[str, LoadReport]:
    """Each stream sends at `rate` requests/s for `seconds` (open loop) while `side` runs."""
    reports = {name: LoadReport() for name in sends}
    start = time.monotonic()

    def one(name: str) -> None:
        outcome = sends[name]()
        reports[name].add(time.monotonic() - start, outcome)

    worker = threading.Thread(target=side)
    with ThreadPoolExecutor(128) as pool:
        worker.start()
        n = 0
        while (elapsed := time.monotonic() - start) < seconds:
            if n / rate > elapsed:
                time.sleep(n / rate - elapsed)
            for name in sends:
                pool.submit(one, name)
            n += 1
        worker.join()
    return reports


def replica_pids(app: str, deployment: str) -> list[int]:
    """Pids of the replica processes of `deployment` in `app` (Ray names the process)."""
    marker = f"ServeReplica:{serve_app(app, deployment)}:{deployment}"
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def fault_app(max_requests: int = 2016, prefix: str = "/faults") -> dict[str, Any]:
    """Two catalogue ingress replicas (as the chart runs them) and one model replica, which admits
    `max_requests` at once (by default enough to hold requests while a killed replica is replaced,
    rather than shedding them)."""
    app = default_app_config(only=CORE_MODELS)
    app["route_prefix"] = prefix
    app["args"]["models"] = [{"name": "digits_cnn"}]
    ingress: dict[str, Any] = {"name": "Ingress", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.1}}
    app["deployments"] = [
        ingress,
        {
            "name": "digits_cnn",
            "ray_actor_options": {"num_cpus": 0.25},
            "graceful_shutdown_wait_loop_s": 0.5,
            "graceful_shutdown_timeout_s": 20,
            "user_config": {"max_requests": max_requests, "max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        },
    ]
    return app


@pytest.fixture(scope="module")
def faults(cluster: ServeCluster) -> Iterator[tuple[ServeCluster, str]]:
    main = cluster.apps[MAIN_APP]
    cluster.deploy({MAIN_APP: main, APP: fault_app()})
    yield cluster, f"{cluster.url}/faults"
    cluster.deploy({MAIN_APP: main})


def senders(url: str, png: bytes) -> tuple[dict[str, Callable[[], str]], list[Any]]:
    """A retrying client (the maas client's policy) and a plain one, sending the same image."""
    retrying = VisionClient(url, timeout=30.0, retry=RetryPolicy(max_attempts=30, backoff_cap=2.0, timeout_total=60))
    plain = httpx.Client(timeout=30.0)

    def with_retries() -> str:
        try:
            retrying.predict("digits_cnn", png)
            return "ok"
        except ApiError as exc:
            return str(exc.status)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    def without_retries() -> str:
        try:
            response = plain.post(
                f"{url}/v1/models/digits_cnn:predict", content=png, headers={"Content-Type": "image/png"}
            )
            return "ok" if response.status_code == 200 else str(response.status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    return {"with_retries": with_retries, "without_retries": without_retries}, [retrying, plain]


@pytest.mark.parametrize("deployment", ["digits_cnn", "Ingress"])
def test_killed_replica_loses_no_request_with_retries_and_is_replaced_within_30s(
    faults: tuple[ServeCluster, str], digit_pngs: list[tuple[bytes, int]], deployment: str
) -> None:
    _, url = faults
    sends, clients = senders(url, digit_pngs[0][0])
    before = set(replica_pids(APP, deployment))
    victim = min(before)
    replaced: dict[str, float] = {}
    # Requests certainly in flight when a model replica dies (large pictures take it a while to
    # decode): their connections drop mid-request, which Serve's HAProxy answers with its own
    # plain 500; the retrying client sends them again.
    large = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 1500), dtype=np.uint8)))
    burst = ThreadPoolExecutor(4)
    in_flight: list[Future[dict[str, Any]]] = []

    def kill() -> None:
        time.sleep(5)
        if deployment != "Ingress":  # the model's own route does not pass through an ingress
            in_flight.extend(burst.submit(clients[0].predict, "digits_cnn", large) for _ in range(4))
            time.sleep(0.03)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = killed_at + 60
        while time.monotonic() < deadline:
            fresh = set(replica_pids(APP, deployment)) - before
            if fresh:
                try:
                    if httpx.get(f"{url}/v1/models/digits_cnn", timeout=5).status_code == 200:
                        replaced["seconds"] = time.monotonic() - killed_at
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)

    try:
        # 20 requests/s in all: half from a retrying client, half from a plain one.
        reports = run_load(sends, RATE / 2, 25, kill)
        lost = [str(error) for error in (answer.exception() for answer in in_flight) if error]
    finally:
        burst.shutdown()
        for client in clients:
            client.close()
    sent = {name: len(r.outcomes) for name, r in reports.items()}
    failed = {name: r.failed() for name, r in reports.items()}
    kinds = {name: r.failures() for name, r in reports.items()}
    print(
        f"\nkill {deployment}: sent {sent}, failed {failed} {kinds},"
        f" replaced in {replaced.get('seconds', -1):.1f}s; {len(in_flight)} in flight, failed {len(lost)}"
    )
    assert replaced["seconds"] < 30
    assert failed["with_retries"] == 0, reports["with_retries"].counts()
    assert not lost, lost
    assert failed["without_retries"] < 0.01 * sent["without_retries"], reports["without_retries"].counts()


def test_redeploys_under_load_drop_no_request(
    faults: tuple[ServeCluster, str], digit_pngs: list[tuple[bytes, int]]
) -> None:
    cluster, url = faults
    sends, clients = senders(url, digit_pngs[0][0])
    del sends["with_retries"]  # zero drops must hold without client retries
    main = cluster.apps[MAIN_APP]
    stages: list[str] = []

    def redeploy() -> None:
        time.sleep(3)
        tuned = fault_app()
        tuned["deployments"][1]["user_config"] = {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}
        cluster.deploy({MAIN_APP: main, APP: tuned})  # user_config only: reconfigured in place
        stages.append("user_config")
        time.sleep(3)
        new_version = copy.deepcopy(tuned)
        new_version["args"]["models"] = [{"name": "digits_cnn", "weights": "random"}]
        cluster.deploy({MAIN_APP: main, APP: new_version})  # a new model version: replicas replaced
        stages.append("model_version")
        time.sleep(3)

    try:
        reports = run_load(sends, RATE, 25, redeploy)
    finally:
        for client in clients:
            client.close()
        cluster.deploy({MAIN_APP: main, APP: fault_app()})
    report = reports["without_retries"]
    print(f"\nredeploys {stages}: sent {len(report.outcomes)}, failed {report.failed()}")
    assert stages == ["user_config", "model_version"]
    assert report.failed() == 0, report.counts()


def _closed_loop_throughput(send: Callable[[], str], seconds: float, workers: int = 8) -> tuple[float, Counter[str]]:
    done: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            outcome = send()
            with lock:
                done[outcome] += 1

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done["ok"] / seconds, done


def test_overload_beyond_the_queue_sheds_with_503_never_500_and_recovers(faults: tuple[ServeCluster, str]) -> None:
    cluster, base = faults
    # A short admission limit, as a latency-bound service sets it: excess load is shed with 503,
    # by the model's replica itself (it is the ingress of :predict), in the API's JSON.
    main = cluster.apps[MAIN_APP]
    overload = fault_app(48, "/overload")
    cluster.deploy({MAIN_APP: main, APP: fault_app(), "overload": overload})
    url = base.replace("/faults", "/overload")
    # A large image keeps each request busy for tens of milliseconds on this small model.
    rng = np.random.default_rng(0)
    heavy = encode(Image.fromarray(rng.integers(0, 256, (1200, 1200), dtype=np.uint8)))
    http = httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=256))

    def send() -> str:
        try:
            response = http.post(
                f"{url}/v1/models/digits_cnn:predict", content=heavy, headers={"Content-Type": "image/png"}
            )
            if response.status_code in (429, 503):
                # Every overload answer is the API's JSON error, with Retry-After.
                error = response.json()["error"]["code"]
                assert error in ("overloaded", "rate_limited"), error
                assert response.headers["Retry-After"], response.headers
            return "ok" if response.status_code == 200 else str(response.status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        except (ValueError, KeyError, AssertionError):
            return "not JSON: " + response.text[:80]

    try:
        # Capacity at saturation: enough clients to keep the replica busy, fewer than it admits (48),
        # so none is shed while measuring.
        capacity, _ = _closed_loop_throughput(send, 8, workers=32)
        assert capacity > 0
        # Overload by requests in flight, not by a rate (a rate the client cannot reach would not
        # overload): 192 at once, where the model's replica admits 48: whatever does not fit is shed.
        goodput, counts = _closed_loop_throughput(send, 20, workers=192)
        time.sleep(5)
        recovered, after = _closed_loop_throughput(send, 8, workers=32)
    finally:
        http.close()
        cluster.deploy({MAIN_APP: main, APP: fault_app()})
    print(f"\noverload, 192 clients for 20s at capacity {capacity:.1f}/s: {dict(counts)}, {goodput:.1f}/s ok; ")
    print(f"after: {recovered:.1f}/s {dict(after)}")
    assert set(counts) <= {"ok", "503", "429"}, counts
    assert counts["503"] + counts["429"] > 0
    # Shedding keeps the model doing work it can finish. These clients resend the moment they are
    # refused, ignoring Retry-After; each refusal is answered by the model's own replica (it is the
    # :predict ingress), on the cores the model uses. Measured: 0.32 to 0.63 of capacity (it was 0.5
    # and more when a separate ingress refused): a known regression of the one-hop design, bounded
    # here so that a collapse (refusals starving the model entirely) still fails.
    assert goodput >= 0.25 * capacity
    assert recovered >= 0.7 * capacity
