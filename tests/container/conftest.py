"""The container tier: the serving image built offline with podman, once per test session."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.container import image as img

TAG = "localhost/vision-maas:container-tests"


@dataclass(frozen=True)
class BuiltImage:
    """The image under test and what its build cost."""

    ref: str
    build_s: float
    size_bytes: int


# The first test of a session builds the base, the wheelhouse and the image when they are not
# cached (about ten minutes on 2 busy cores), within its own time limit.
TIMEOUT_S = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/container/" in item.nodeid:
            item.add_marker(pytest.mark.container)
            item.add_marker(pytest.mark.timeout(TIMEOUT_S))


@pytest.fixture(scope="session")
def podman_ready() -> None:
    """Skip the tier, saying why, where podman cannot run here (`make tools` installs it)."""
    missing = img.missing_tools()
    if missing:
        pytest.skip(f"container tier needs {', '.join(missing)} (Debian packages; `make tools` installs them)")
    info = img.podman("info", "--format", "json", check=False, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    json.loads(info.stdout)


@pytest.fixture(scope="session")
def built_image(podman_ready: None) -> BuiltImage:
    """The local base, the wheelhouse and the image, each reused while its inputs are unchanged."""
    img.build_base()
    wheelhouse = img.build_wheelhouse()
    seconds = img.build_image(TAG, wheelhouse)
    # Earlier builds of the tag leave untagged images (gigabytes each) in the tier's own storage.
    img.remove_build_leftovers()
    return BuiltImage(TAG, seconds, img.image_size(TAG))


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 1.0) -> None:
    """Poll `predicate()` until it is true, or fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, subprocess.SubprocessError, httpx.TransportError):
            pass
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
