"""A replica verifies its weights' signed manifest before loading, and refuses to start otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from models.weights import sha256_file
from tests.conftest import signed_weights
from tests.integration.conftest import CORE_MODELS, MAIN_APP, ServeCluster, default_app_config


def signed_app(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """An app serving squeezenet1_1 from a signed weights directory, signatures required."""
    path, key_file = signed_weights(tmp_path)
    app = default_app_config(only=CORE_MODELS)
    app["route_prefix"] = "/signed"
    app["args"]["models"] = [{"name": "squeezenet1_1", "weights": str(path), "sha256": sha256_file(path)}]
    app["args"]["artifacts"] = {"require_signatures": True, "public_keys_file": str(key_file)}
    app["deployments"] = [
        {"name": "Ingress", "ray_actor_options": {"num_cpus": 0.1}},
        {"name": "squeezenet1_1", "ray_actor_options": {"num_cpus": 0.25}},
    ]
    return app, path.parent


def test_replica_refuses_to_start_naming_the_file_added_to_signed_weights(
    cluster: ServeCluster, tmp_path: Path, photo_jpeg: bytes
) -> None:
    main = cluster.apps[MAIN_APP]
    app, directory = signed_app(tmp_path)
    try:
        cluster.deploy({MAIN_APP: main, "signed": app})
        response = httpx.post(
            f"{cluster.url}/signed/v1/models/squeezenet1_1:predict",
            content=photo_jpeg,
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        )
        assert response.status_code == 200
        cluster.deploy({MAIN_APP: main})
        (directory / "implant.pt").write_bytes(b"\x80\x04N.")
        with pytest.raises(RuntimeError, match=r"implant\.pt is not listed in MANIFEST\.json"):
            cluster.deploy({MAIN_APP: main, "signed": app})
    finally:
        cluster.deploy({MAIN_APP: main})
