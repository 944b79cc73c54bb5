"""Shared test data: real images made from data that ships with scikit-learn."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import torchvision
from PIL import Image
from safetensors.torch import save_file

from deployments.ray_env import ONE_MACHINE_ENV, THROUGHPUT_ENV
from models import manifest
from models.training.data import digits_split, render_digit

# Serve's data path as `make test` exports it (shipped, and on one machine), also when pytest runs on its own:
# set before any test module imports Ray, which reads it once, and inherited by the test clusters.
for _name, _value in (THROUGHPUT_ENV | ONE_MACHINE_ENV).items():
    os.environ.setdefault(_name, _value)

if TYPE_CHECKING:
    from tests.serve_cluster import ServeCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the session's Ray cluster (`make test-fast` leaves them out), and
    run the modules that use it last.

    The session's cluster, once up, stays up to the end with a dozen replicas idling on the same
    cores, and every module after it pays for them: the modules that never use it (unit tests,
    the containers', benchmarks' and first runs' clusters of their own) run first, each module's
    tests in their order, so no module's fixtures are set up twice.
    """
    uses_cluster: set[Path] = set()
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
            uses_cluster.add(item.path)
    items.sort(key=lambda item: item.path in uses_cluster)  # stable: the order within each group is kept


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    """Encode a PIL image to bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def signed_weights(tmp_path: Path) -> tuple[Path, Path]:
    """squeezenet1_1 weights alone in a directory signed by a fresh key: (weights file, public key file)."""
    directory = tmp_path / "weights"
    directory.mkdir()
    path = directory / "squeezenet.safetensors"
    save_file(torchvision.models.squeezenet1_1().state_dict(), str(path))
    private, public = manifest.generate_keypair()
    manifest.write_manifest(directory)
    manifest.sign_manifest(directory, private)
    key_file = tmp_path / "signing.pub"
    key_file.write_bytes(public)
    return path, key_file


@pytest.fixture(scope="session")
def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The held-out split the bundled digits model never trained on: (8x8 images, labels)."""
    _, _, x_test, y_test = digits_split()
    return x_test, y_test


@pytest.fixture(scope="session")
def digit_pngs(held_out_digits: tuple[np.ndarray, np.ndarray]) -> list[tuple[bytes, int]]:
    """Twenty held-out digits as 64x64 dark-on-light PNG pictures, with their labels."""
    images, labels = held_out_digits
    return [(encode(render_digit(images[i])), int(labels[i])) for i in range(20)]


@pytest.fixture(scope="session")
def photo_jpeg() -> bytes:
    """A 640x427 colour photo (scikit-learn's sample 'china.jpg') re-encoded as JPEG."""
    from sklearn.datasets import load_sample_image

    return encode(Image.fromarray(load_sample_image("china.jpg")), "JPEG", quality=90)


# ---- the session's real Serve app, shared by tests/integration and tests/e2e ----------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[ServeCluster]:
    import ray
    from ray import serve

    from deployments.ray_env import host_ports_of_its_own
    from tests.serve_cluster import MAIN_APP, ServeCluster, default_app_config, free_port

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Serve's per-host ports of its own (Ray's processes inherit them): a first-run test, a
    # benchmark or `make serve` may run a cluster beside this one.
    os.environ.update(host_ports_of_its_own())
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve_cluster = ServeCluster(free_port())
        serve_cluster.deploy({MAIN_APP: default_app_config()})
        yield serve_cluster
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def base_url(cluster: ServeCluster) -> str:
    return cluster.url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60.0) as http:
        yield http
