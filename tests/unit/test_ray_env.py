"""Serve's data path is set the same wherever Ray starts: Makefile, Docker image, Helm chart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deployments.args import LimitsArgs
from deployments.ray_env import CLASSIC_ENV, THROUGHPUT_ENV, check_body_limit
from tests.unit.test_dockerfile import assignments, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]


def test_makefile_exports_the_shipped_serve_env_when_it_runs_serve_and_test() -> None:
    exported = dict(re.findall(r"^export (RAY_SERVE_\w+) := (\S+)$", (REPO / "Makefile").read_text(), re.M))
    assert exported == THROUGHPUT_ENV


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
