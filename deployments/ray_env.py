"""The Ray Serve data path vision-maas ships with, as environment variables of every Ray process.

Ray Serve reads these when its processes start, so they are set where Ray starts: the Makefile
(`make serve`, `make test`), the Docker image, and the Helm chart's pod env (a unit test checks
that all of them agree with this module).

- RAY_SERVE_ENABLE_HA_PROXY: HAProxy (C) is the HTTP front door on each node instead of Serve's
  Python proxy actor, and forwards each request straight to an ingress replica's own HTTP server.
- RAY_SERVE_THROUGHPUT_OPTIMIZED: calls between deployments (ingress -> model) go over direct
  gRPC between replicas, and user code runs on the replica's event loop without a thread hop.
- RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE: the mode above buffers 1000 log lines per replica and
  has no timed flush, so a quiet service's access logs would not reach its files for hours.
- RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH: gRPC's 4 MiB default would fail any request body
  over 4 MiB between the ingress and a model (500 instead of an answer); see check_body_limit.

docs/benchmarks.md measures it against Ray's default data path, side by side, for every
benchmarked model.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket

GRPC_MESSAGE_BYTES = 128 * 1024 * 1024
# Room in one message for what travels with the body (parameters, the call's own framing).
_FRAMING_BYTES = 1024 * 1024

THROUGHPUT_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(GRPC_MESSAGE_BYTES),
}

# One machine (`make serve`, the tests, the benchmarks), not the image or the chart: a stopping
# ingress replica stays reachable RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (Ray's default
# 30 s) so that load balancers can deregister it. On a cluster that window protects traffic; on
# one machine the only balancer is the node's HAProxy, which learns of the stop at once and
# retries a refused connection on another replica. At 30 s, Ctrl-C (`serve run` shuts Serve down
# gracefully) took 30 s to stop `make serve`, and every test cluster as long to stop.
#
# RAY_worker_niceness: Ray lowers every worker to niceness 15 (its `worker_niceness`) once it has
# started, but a new worker runs its first second (Python, importing Ray) at the raylet's priority.
# With training on, a job starts about eight processes (Ray Train's controller, helpers, workers), and
# on shared cores those start-ups ran 28x ahead of the serving replicas: :predict's p99 went from
# 20 ms to 400 ms while a job started (benchmarks/training.py). Serving replicas at the raylet's own
# priority share fairly with any start-up; training's processes run below it, from their first
# instruction (training.niceness, deployments/training.py runtime_env).
#
# RAY_SERVE_CONTROL_LOOP_INTERVAL_S: Serve's controller runs its whole loop (the cluster's nodes from
# the GCS, every deployment's state, autoscaling, proxies) ten times a second, busy or idle: the
# largest process of an idle default deployment, and much of its GCS's CPU. Twice a second, the
# controller costs about a third and the GCS under half, at the same time to ready (docs/benchmarks.md,
# the idle table); a state change (a replica ready, dead or to start) waits up to 0.4 s more.
ONE_MACHINE_ENV: dict[str, str] = {
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "RAY_worker_niceness": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}

# Ray's own defaults (its Python proxy actor and actor calls between deployments), for comparison.
CLASSIC_ENV: dict[str, str] = {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}


def check_body_limit(max_body_bytes: int, environ: dict[str, str] | None = None) -> None:
    """Refuse, at deploy time, a body limit whose requests could not cross to the model replicas."""
    env = os.environ if environ is None else environ
    if env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0") != "1":
        return  # actor calls through the object store: no message cap
    # Ray's own default when the variable is unset: gRPC's 4 MiB.
    cap = int(env.get("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", 4 * 1024 * 1024))
    if max_body_bytes + _FRAMING_BYTES > cap:
        raise ValueError(
            f"limits.max_body_bytes ({max_body_bytes}) does not fit Serve's gRPC messages between replicas "
            f"({cap} bytes); raise RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH on every Ray node or lower the limit"
        )


# Serve's ports with a fixed default on every host (Ray picks its other ports itself). In a pod they
# are the pod's own; two clusters, or two nodes, on one machine must each get theirs, or one
# cluster's HAProxy answers with the other's application: its backup server is the fallback proxy
# on 8500, and replicas bind their own servers in 30000-31000 / 40000-41000 with SO_REUSEPORT.
_SINGLE_PORTS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",  # 8404
    "RAY_SERVE_HAPROXY_METRICS_PORT",  # 9101
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",  # 8500
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",  # 9500
)
# Below Linux's ephemeral range (32768 and up), where no client socket takes a port later.
_BAND_RANGE = (20000, 32000)


def host_ports_of_its_own(replica_ports: int = 128, rng: random.Random | None = None) -> dict[str, str]:
    """Environment giving one Ray node Serve ports no other local cluster uses.

    One band of ports free now, below the ephemeral range: the four single ports, then
    `replica_ports` each for the replicas' own HTTP and gRPC servers (direct ingress).
    """
    rng = rng or random.Random()
    width = len(_SINGLE_PORTS) + 2 * replica_ports
    low, high = _BAND_RANGE
    for base in rng.sample(range(low, high - width, width), 32):
        if not _all_free(range(base, base + width)):
            continue
        http, grpc = base + len(_SINGLE_PORTS), base + len(_SINGLE_PORTS) + replica_ports
        return {name: str(base + i) for i, name in enumerate(_SINGLE_PORTS)} | {
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(grpc - 1),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + width - 1),
        }
    raise RuntimeError(f"no band of {width} free ports in {low}-{high}")


def _all_free(ports: range) -> bool:
    with contextlib.ExitStack() as stack:
        try:
            for port in ports:
                sock = stack.enter_context(socket.socket())
                sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
