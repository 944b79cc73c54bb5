"""The serving image run as a user runs it: non-root, read-only, served, scraped, stopped."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.container import image as img
from tests.container.conftest import BuiltImage, wait_until
from tests.serve_cluster import free_port

# `podman stop`'s grace before SIGKILL, as Kubernetes' default terminationGracePeriodSeconds.
GRACE_S = 30
READY_S = 300


@pytest.fixture
def served(built_image: BuiltImage) -> Iterator[tuple[str, str]]:
    """The image's own command in a container: uid 1000, read-only root, a writable /tmp only."""
    name = f"vision-maas-test-{secrets.token_hex(4)}"
    port = free_port()
    img.podman(
        "run",
        "--detach",
        "--name",
        name,
        "--user",
        "1000:100",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs",
        "/tmp:rw,mode=1777,size=2g",
        # Ray's object store: below its wanted size it falls back to /tmp, slower.
        "--shm-size",
        "1g",
        *img.ULIMITS,
        *img.HOST_LIMITS_ENV,
        "--publish",
        f"127.0.0.1:{port}:8000",
        built_image.ref,
    )
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        img.remove_container(name)


def test_image_serves_a_digit_as_non_root_on_a_read_only_root_and_stops_on_sigterm(
    served: tuple[str, str], digit_pngs: list[tuple[bytes, int]]
) -> None:
    name, url = served
    png, label = digit_pngs[0]
    with httpx.Client(base_url=url, timeout=30.0) as http:

        def answers() -> bool:
            state = img.podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", img.podman("logs", "--tail", "60", name, check=False).stderr
            response = http.post("/v1/models/digits_cnn:predict", content=png, headers={"Content-Type": "image/png"})
            return response.status_code == 200

        wait_until(answers, READY_S, "digits_cnn answering in the container", poll_s=2.0)
        response = http.post("/v1/models/digits_cnn:predict", content=png, headers={"Content-Type": "image/png"})
        assert response.json()["predictions"][0]["labels"][0]["label"] == str(label)
        # The image's HEALTHCHECK, run as the engine runs it.
        assert img.podman("healthcheck", "run", name, check=False).returncode == 0

        def counted() -> bool:
            metrics = http.get("/metrics")
            assert metrics.status_code == 200, metrics.text
            return "vision_maas_requests_total{" in metrics.text and 'model="digits_cnn"' in metrics.text

        wait_until(counted, 60, "the prediction counted on /metrics", poll_s=2.0)

    assert img.podman("exec", name, "id", "-u").stdout.strip() == "1000"
    top = img.podman("top", name, "user", "pid", "args").stdout.splitlines()[1:]
    assert len(top) > 5
    assert {line.split()[0] for line in top} == {"ray"}, top  # every process, PID 1 (dumb-init) included
    assert top[0].split()[1:3] == ["1", "dumb-init"], top[0]
    assert img.podman("exec", name, "touch", "/home/ray/x", check=False).returncode != 0  # read-only root

    started = time.monotonic()
    img.podman("stop", "--time", str(GRACE_S), name, timeout=GRACE_S + 30)
    stopped_s = time.monotonic() - started
    state = img.podman("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", name).stdout.split()
    logs = img.podman("logs", "--tail", "30", name, check=False)
    assert stopped_s < GRACE_S, f"took {stopped_s:.1f} s: killed at the grace's end\n{logs.stdout}{logs.stderr}"
    assert state == ["0", "false"], f"{state}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
