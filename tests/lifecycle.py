"""What the end-to-end tests of training and the model lifecycle share: the routes each test needs
(it skips, naming the missing ones, until the API has them), and a small labelled image set
drawn offline from scikit-learn's digits."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.training.data import digits_split, render_digit
from tests.conftest import encode

ROUTES: dict[str, tuple[str, ...]] = {
    "datasets": ("POST /v1/datasets", "GET /v1/datasets", "GET /v1/datasets/{}", "DELETE /v1/datasets/{}"),
    "jobs": (
        "POST /v1/training/jobs",
        "GET /v1/training/jobs",
        "GET /v1/training/jobs/{}",
        "DELETE /v1/training/jobs/{}",
        "GET /v1/training/jobs/{}/events",
    ),
    "versions": (
        "GET /v1/models/{}/versions",
        "POST /v1/models/{}/versions/{}:predict",
        "GET /v1/models/{}/rollout",
        "POST /v1/models/{}/rollout",
        "POST /v1/models/{}/rollback",
    ),
}
# Three digits as three classes: different enough for digits_cnn's backbone to tell apart in two epochs.
CLASSES = {"zero": 0, "one": 1, "seven": 7}
BROKEN = "zero/broken.png"


def _routes(paths: dict[str, dict[str, object]]) -> frozenset[str]:
    """`METHOD /path` of every operation of an OpenAPI document, path parameters written `{}`."""
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return frozenset(
        f"{method.upper()} {re.sub(r'{[^}]*}', '{}', path)}"
        for path, item in paths.items()
        for method in item
        if method in methods
    )


@functools.cache
def _reference_routes() -> frozenset[str]:
    from deployments.rest.app import reference_app

    return _routes(reference_app().openapi()["paths"])


def missing(*groups: str) -> list[str]:
    """The routes of `groups` that the API's OpenAPI document (deployments.rest.app.reference_app) lacks."""
    return [route for group in groups for route in ROUTES[group] if route not in _reference_routes()]


def needs(*groups: str) -> pytest.MarkDecorator:
    """Skip until the API has every route of `groups`, naming those it lacks."""
    absent = missing(*groups)
    reason = f"the API has no {', '.join(absent)} (not in reference_app()'s OpenAPI document)"
    return pytest.mark.skipif(bool(absent), reason=reason)


def require_served(base_url: str, *groups: str) -> None:
    """Fail, saying why, when the running app does not serve the routes (training not enabled in its config)."""
    served = _routes(httpx.get(f"{base_url}/openapi.json", timeout=30).json()["paths"])
    absent = [route for group in groups for route in ROUTES[group] if route not in served]
    if absent:
        pytest.fail(f"the session's app does not serve {', '.join(absent)}: is `training.enabled` set in its config?")


def digit_folder(root: Path, per_class: int = 12, offset: int = 0) -> Path:
    """A data set folder `<label>/<n>.png` of CLASSES (32x32 digits), plus one file that is no image
    (BROKEN, which the server rejects by name) and a hidden one (which packing leaves out)."""
    images, labels, _, _ = digits_split()
    for name, digit in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        chosen = np.flatnonzero(labels == digit)[offset : offset + per_class]
        for i, index in enumerate(chosen):
            (root / name / f"{i:03d}.png").write_bytes(encode(render_digit(images[index], size=32)))
    (root / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (root / ".DS_Store").write_bytes(b"\0finder")
    return root


def canary_share_bound(share: float, calls: int) -> float:
    """How far a canary's measured share of `calls` may stray from `share` when the split is right.

    Each call draws its version at random: 5 standard deviations of the binomial share (0.089 for
    500 calls at 20%), which a correct split passes about once in a million runs; 0.15 to 0.25 at
    500 calls (2.8) failed about once in a hundred.
    """
    return float(5 * (share * (1 - share) / calls) ** 0.5)
