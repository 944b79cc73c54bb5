"""The chart, rendered through Helm's Go SDK (no helm binary, no cluster)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# KubeRay v1.7.0, vendored with its source and licence (k8s/schemas/README.md).
RAYSERVICE_CRD = REPO / "k8s" / "schemas" / "ray.io_rayservices.yaml"


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_render", REPO / "k8s" / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_module = _load_render()
VALUE_FILES = sorted((render_module.CHART / "ci").glob("*-values.yaml"))
VALUE_SETS: dict[str, dict[str, Any]] = {"defaults": {}} | {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text()) for path in VALUE_FILES
}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def rayservice(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (service,) = by_kind(docs, "RayService")
    return service


@pytest.fixture(
    scope="session",
    # The defaults in `make test-fast`; every other value set (a render and a schema check each,
    # about a second) in `make test`.
    params=[name if name == "defaults" else pytest.param(name, marks=pytest.mark.slow) for name in sorted(VALUE_SETS)],
)
def value_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, VALUE_SETS[request.param]


@pytest.fixture(scope="session")
def rendered(value_set: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = render_module.render(value_set[1])
    return docs


@pytest.fixture(scope="session")
def rayservice_schema() -> dict[str, Any]:
    crd = yaml.safe_load(RAYSERVICE_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema
