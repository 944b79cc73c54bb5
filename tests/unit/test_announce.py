"""`make serve` announces where it listens, and explains on the console why it is not ready yet.

The payloads are the dashboard's answers recorded while `serve run` started the shipped config with
API keys on and 0.25 CPU per replica on 2 cores (trimmed to the fields the announcer reads).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from deployments import announce
from deployments.announce import (
    Cluster,
    Watcher,
    cluster_state,
    listen_url,
    main,
    problems,
    ray_auth_headers,
    supervise,
)

MODELS = (
    "digits_cnn",
    "digits_detector",
    "digits_segmenter",
    "digits_dcgan",
    "digits_denoiser",
    "photo_denoiser",
    "moving_digits_lstm",
)
SLOW_SCHEDULING = (
    "Deployment 'Ingress' in application 'vision-maas' has 1 replicas that have taken more than 30s to be "
    "scheduled. This may be due to waiting for the cluster to auto-scale or for a runtime environment to be "
    'installed. Resources required for each replica: {"CPU": 0.25}, total resources available: {"CPU": 0.2}. '
    "Use `ray status` for more details."
)


def replica(state: str, placed: bool) -> dict[str, Any]:
    """One entry of a deployment's `replicas`: node_id appears once the replica is placed and started."""
    entry: dict[str, Any] = {"actor_name": "SERVE_REPLICA::vision-maas#x#abc", "replica_id": "abc", "state": state}
    if placed:
        entry |= {"node_id": "2e36fdc16e2e2ec69cacd65ebdb6fa86bf86b729d4c8515c7de22676", "pid": 15499}
    return entry


def deployment(cpus: float, state: str = "STARTING", placed: bool = False, message: str = "") -> dict[str, Any]:
    status = "HEALTHY" if state == "RUNNING" else "UPDATING"
    return {
        "status": status,
        "status_trigger": "CONFIG_UPDATE_COMPLETED" if status == "HEALTHY" else "CONFIG_UPDATE_STARTED",
        "message": message,
        "target_num_replicas": 1,
        "required_resources": {"CPU": cpus},
        "replicas": [replica(state, placed)],
    }


def app(deployments: dict[str, dict[str, Any]], status: str = "DEPLOYING", message: str = "") -> dict[str, Any]:
    return {"applications": {"vision-maas": {"status": status, "message": message, "deployments": deployments}}}


def starting(share: float) -> dict[str, Any]:
    """Every replica of the shipped app with API keys on, just created: none started yet."""
    deployments = {name: deployment(share) for name in MODELS}
    return app(deployments | {"RateLimiter": deployment(0.05), "Ingress": deployment(share)})


def dashboard_status(used: float, pending: list[Any]) -> dict[str, Any]:
    """GET /api/cluster_status of a 2-CPU local cluster, as recorded (camelCased by the dashboard)."""
    report = {
        "usage": {
            "CPU": [used, 2.0],
            "objectStoreMemory": [3878402.0, 6504607334.0],
            "node:InternalHead": [0.001, 1.0],
        },
        "resourceDemand": pending,
        "pgDemand": [],
        "requestDemand": [],
    }
    return {"result": True, "msg": "Got cluster status.", "data": {"clusterStatus": {"loadMetricsReport": report}}}


ONE_QUARTER_WAITING = cluster_state(dashboard_status(1.8, [[{"CPU": 0.25}, 1]]))


def test_listen_url_is_read_from_http_options(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("http_options:\n  host: 0.0.0.0\n  port: 9001\napplications: []\n")
    assert listen_url(config) == "http://0.0.0.0:9001"


def test_listen_url_defaults_to_serve_defaults_when_absent(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("applications: []\n")
    assert listen_url(config) == "http://127.0.0.1:8000"


def test_cluster_state_reads_usage_and_pending_demand_from_the_dashboard() -> None:
    assert ONE_QUARTER_WAITING.usage["CPU"] == (1.8, 2.0)
    assert ONE_QUARTER_WAITING.pending == [({"CPU": 0.25}, 1)]
    assert cluster_state({"result": True, "data": {"clusterStatus": None}}) == Cluster({}, [])


def test_an_app_asking_more_cpus_than_the_cluster_has_is_explained_at_once() -> None:
    text, fatal = Watcher().observe(starting(0.25), ONE_QUARTER_WAITING, now=0.0)
    assert text == (
        "vision-maas is not ready yet:\n"
        "  vision-maas: its 9 replicas ask for {CPU: 2.05} in all; the cluster has {CPU: 2.0}: "
        "lower ray_actor_options.num_cpus or num_replicas in the config"
    )
    assert not fatal


def test_waiting_replicas_are_reported_after_the_grace_among_those_not_started() -> None:
    watcher = Watcher()
    watcher.observe(starting(0.25), ONE_QUARTER_WAITING, now=0.0)
    text, _ = watcher.observe(starting(0.25), ONE_QUARTER_WAITING, now=announce.GRACE_S)
    assert text is not None
    assert text.splitlines()[-1] == (
        "  1 replica waiting for {CPU: 0.25}, among those of "
        + ", ".join((*MODELS, "Ingress"))
        + " not started yet; cluster has CPU 2.0, 0.2 free"
    )


def test_the_waiting_replica_is_named_once_the_others_started_and_serve_message_is_not_repeated() -> None:
    started = {name: deployment(0.25, "RUNNING", placed=True) for name in MODELS}
    payload = app(
        started
        | {"RateLimiter": deployment(0.05, "RUNNING", True), "Ingress": deployment(0.25, message=SLOW_SCHEDULING)}
    )
    lines = [p.text for p in problems(payload, ONE_QUARTER_WAITING)]
    assert lines == [
        "vision-maas: its 9 replicas ask for {CPU: 2.05} in all; the cluster has {CPU: 2.0}: "
        "lower ray_actor_options.num_cpus or num_replicas in the config",
        "Ingress: 1 replica waiting for {CPU: 0.25}; cluster has CPU 2.0, 0.2 free",
    ]


def test_replicas_that_fit_are_not_reported_while_their_workers_start() -> None:
    # The shipped share: 9 x 0.2 + 0.05 leaves CPU free, and nothing waits for a node.
    assert problems(starting(0.2), cluster_state(dashboard_status(1.65, []))) == []


def test_a_replica_larger_than_the_cluster_is_explained_without_grace() -> None:
    payload = app({"digits_cnn": deployment(64.0), "Ingress": deployment(0.2, "RUNNING", placed=True)})
    text, fatal = Watcher().observe(payload, cluster_state(dashboard_status(0.2, [[{"CPU": 64.0}, 1]])), now=0.0)
    assert text == (
        "vision-maas is not ready yet:\n"
        "  vision-maas: its 2 replicas ask for {CPU: 64.2} in all; the cluster has {CPU: 2.0}: "
        "lower ray_actor_options.num_cpus or num_replicas in the config\n"
        "  digits_cnn: 1 replica waiting for {CPU: 64.0}; cluster has CPU 2.0, 1.8 free "
        "(never enough: more than the whole cluster has)"
    )
    assert not fatal


def test_a_failed_application_is_fatal_and_shows_the_end_of_its_error_at_once() -> None:
    traceback = "\n".join(
        [
            "Deploying app 'vision-maas' failed with exception:",
            "Traceback (most recent call last):",
            *(f'  File "frame{i}.py", line {i}, in f' for i in range(30)),
            "deployments.auth.KeyStoreError: authentication is on but no API keys are configured: "
            "set auth.keys_file or the VISION_MAAS_API_KEYS variable",
        ]
    )
    text, fatal = Watcher().observe(app({}, status="DEPLOY_FAILED", message=traceback), Cluster({}, []), now=0.0)
    assert fatal
    assert text is not None
    lines = text.splitlines()
    assert lines[:3] == [
        "vision-maas failed:",
        "  vision-maas: DEPLOY_FAILED: Deploying app 'vision-maas' failed with exception:",
        "    ...",
    ]
    assert lines[-1].endswith(
        "KeyStoreError: authentication is on but no API keys are configured: "
        "set auth.keys_file or the VISION_MAAS_API_KEYS variable"
    )
    assert len(lines) == 1 + announce.ERROR_LINES


def test_a_deployment_failing_to_start_is_shown_with_its_message_at_once() -> None:
    failed = deployment(0.2, message="The deployment failed to start 3 times in a row. ValueError: bad weights")
    failed["status"] = "DEPLOY_FAILED"
    text, fatal = Watcher().observe(app({"digits_cnn": failed}), cluster_state(dashboard_status(0.2, [])), now=0.0)
    assert text == (
        "vision-maas is not ready yet:\n"
        "  digits_cnn: DEPLOY_FAILED: The deployment failed to start 3 times in a row. ValueError: bad weights"
    )
    assert not fatal  # the application's own DEPLOY_FAILED, which follows, stops `serve run`


def test_the_same_explanation_is_printed_once_and_again_when_it_changes() -> None:
    watcher = Watcher()
    first, _ = watcher.observe(starting(0.25), ONE_QUARTER_WAITING, now=0.0)
    again, _ = watcher.observe(starting(0.25), ONE_QUARTER_WAITING, now=1.0)
    changed, _ = watcher.observe(starting(0.25), ONE_QUARTER_WAITING, now=1.0 + announce.GRACE_S)
    assert first is not None
    assert again is None
    assert changed is not None
    assert changed.startswith(first)


def test_an_application_unhealthy_past_the_give_up_time_is_fatal() -> None:
    watcher = Watcher()
    sick = app({"digits_cnn": deployment(0.2, "RUNNING", placed=True)}, status="UNHEALTHY")
    assert watcher.observe(sick, Cluster({}, []), now=0.0) == (None, False)
    text, fatal = watcher.observe(sick, Cluster({}, []), now=announce.UNHEALTHY_GIVE_UP_S)
    assert fatal
    assert text == f"vision-maas failed:\n  still UNHEALTHY after {announce.UNHEALTHY_GIVE_UP_S:.0f} s"


def test_ray_auth_headers_follow_rays_token_lookup_order(tmp_path: Path) -> None:
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "token").write_text("from-path")
    path = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    assert ray_auth_headers({"RAY_AUTH_TOKEN": "from-env", **path}, tmp_path) == {"Authorization": "Bearer from-env"}
    assert ray_auth_headers(path, tmp_path) == {"Authorization": "Bearer from-path"}
    assert ray_auth_headers({}, tmp_path) == {"Authorization": "Bearer from-home"}
    assert ray_auth_headers({"RAY_AUTH_MODE": "disabled"}, tmp_path) == {}
    assert ray_auth_headers({}, tmp_path / "nowhere") == {}


def test_supervise_returns_the_status_of_a_command_that_exits_by_itself(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("http_options:\n  host: 127.0.0.1\n  port: 9\napplications: []\n")
    assert supervise(config, [sys.executable, "-c", "import sys; sys.exit(3)"]) == 3


def test_main_refuses_a_command_line_without_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["announce", "deployments/serve_config.yaml"]) == 2
    assert "usage: python -m deployments.announce CONFIG -- COMMAND..." in capsys.readouterr().err
