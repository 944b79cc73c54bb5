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

import os

GRPC_MESSAGE_BYTES = 128 * 1024 * 1024
# Room in one message for what travels with the body (parameters, the call's own framing).
_FRAMING_BYTES = 1024 * 1024

THROUGHPUT_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(GRPC_MESSAGE_BYTES),
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


def haproxy_side_ports(stats_port: int, metrics_port: int) -> dict[str, str]:
    """HAProxy's stats and Prometheus ports for one Ray node where several share a host.

    Each node's HAProxy binds them (8404 and 9101 by default, on every interface); in a pod they are
    the pod's own, but two nodes on one machine (the multi-node test, a benchmark server beside a
    running cluster) must each get theirs. Ray already keeps each node's HAProxy files apart.
    """
    return {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port)}
