"""Serve's data path is set the same wherever Ray starts: Makefile, Docker image, Helm chart."""

from __future__ import annotations

import random
import re
import socket
from pathlib import Path

import pytest
import yaml

from deployments.args import LimitsArgs
from deployments.ray_env import (
    CLASSIC_ENV,
    ONE_MACHINE_ENV,
    THROUGHPUT_ENV,
    check_body_limit,
    host_ports_of_its_own,
)
from tests.unit.test_dockerfile import assignments, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]


def test_makefile_exports_the_shipped_serve_env_when_it_runs_serve_and_test() -> None:
    exported = dict(re.findall(r"^export (RAY_\w+) := (\S+)$", (REPO / "Makefile").read_text(), re.M))
    del exported["RAY_USAGE_STATS_ENABLED"]  # not Serve's data path: no usage reports from any run
    # `make serve` and `make test` run on one machine; the image and the chart do not get it.
    assert exported == THROUGHPUT_ENV | ONE_MACHINE_ENV


def test_docker_image_sets_the_shipped_serve_env_when_a_pod_starts() -> None:
    env: dict[str, str] = {}
    for instruction in parse_dockerfile((REPO / "Dockerfile").read_text()):
        if instruction.keyword == "ENV":
            env |= assignments(instruction.args)
    assert {k: v for k, v in env.items() if k.startswith("RAY_SERVE_")} == THROUGHPUT_ENV


def test_chart_values_and_rendered_manifest_set_it_on_head_and_workers() -> None:
    values = yaml.safe_load((REPO / "k8s/helm/vision-maas/values.yaml").read_text())
    assert values["serveEnv"] == THROUGHPUT_ENV
    service = next(
        d for d in yaml.safe_load_all((REPO / "k8s/rayservice.yaml").read_text()) if d and d["kind"] == "RayService"
    )
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"] if e["name"].startswith("RAY_SERVE_")}
            assert env == THROUGHPUT_ENV, container["name"]


def test_default_body_limit_fits_the_grpc_messages_between_replicas() -> None:
    check_body_limit(LimitsArgs().max_body_bytes, THROUGHPUT_ENV)


def test_body_limit_over_the_grpc_message_cap_is_refused_at_deploy_time() -> None:
    too_big = int(THROUGHPUT_ENV["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"])
    with pytest.raises(ValueError, match="RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"):
        check_body_limit(too_big, THROUGHPUT_ENV)
    # gRPC's own 4 MiB when only the mode is turned on: the default 32 MiB limit would fail.
    with pytest.raises(ValueError, match="4194304"):
        check_body_limit(LimitsArgs().max_body_bytes, {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"})


def test_classic_data_path_has_no_message_cap() -> None:
    check_body_limit(10 * 2**30, CLASSIC_ENV)
    check_body_limit(10 * 2**30, {})


def _serve_port_defaults() -> dict[str, int]:
    """Every port Serve binds at a fixed default on each host, as this Ray version declares them."""
    from ray.serve._private import constants

    return {
        name: value
        for name, value in vars(constants).items()
        if re.fullmatch(r"RAY_SERVE_\w+_PORT", name) and isinstance(value, int) and "WORKER_PROXY" not in name
    }


def test_a_local_cluster_gets_every_fixed_serve_port_of_its_own() -> None:
    env = host_ports_of_its_own(replica_ports=16, rng=random.Random(3))
    defaults = _serve_port_defaults()
    # Each of Serve's fixed ports is moved (a new one in a later Ray fails here), and nothing else.
    assert set(env) == set(defaults), set(env) ^ set(defaults)
    ports = {name: int(value) for name, value in env.items()}
    singles = [p for n, p in ports.items() if "DIRECT_INGRESS" not in n]
    http = range(ports["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], ports["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] + 1)
    grpc = range(ports["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"], ports["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"] + 1)
    assert len(http) == len(grpc) == 16
    every = [*singles, *http, *grpc]
    assert len(set(every)) == len(every) == 36  # no two uses share a port
    assert max(every) < 32768  # below the ephemeral range: no client socket takes one later
    assert not set(every) & {*defaults.values(), *range(30000, 31001), *range(40000, 41001)}


def test_a_second_cluster_beside_the_first_gets_other_ports() -> None:
    first = host_ports_of_its_own(replica_ports=16, rng=random.Random(5))
    held = []
    try:
        # The first cluster's processes hold its band, as they would once started.
        for value in first.values():
            sock = socket.socket()
            sock.bind(("127.0.0.1", int(value)))
            held.append(sock)
        # The same draw of bands: the held one is skipped.
        second = host_ports_of_its_own(replica_ports=16, rng=random.Random(5))
    finally:
        for sock in held:
            sock.close()
    assert not {int(v) for v in first.values()} & {int(v) for v in second.values()}
