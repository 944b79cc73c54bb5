"""Schemathesis against the running app's own OpenAPI document: every operation, a bounded and
seeded number of generated requests (valid and invalid), no 5xx and every documented
response matching its schema.

Driven through schemathesis's Python API (`APIOperation.as_strategy` under Hypothesis'
`@given`) rather than its pytest plugin: the plugin's lazy fixture loader (4.32) writes
`request.node._nodeid`, which pytest 9 no longer has. One test per operation, so a bug in one
can be marked on that operation alone.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from contract.lifecycle import ModelVersion, Rollout
from deployments.rest.app import reference_app
from deployments.store import Store, write_json
from tests.serve_cluster import session_store
from tests.unit.test_rollouts import REPORT

MODEL = "digits_cnn"
# Operations only another task answers: a classifier's :generate stops at route_not_supported.
# A trained model's version and rollout routes: a model of the session's store (`trained`, below).
TRAINED = "fuzzed_shapes"
MODEL_FOR = {
    "/v1/models/{model}:generate": "digits_dcgan",
    **dict.fromkeys(
        ("/v1/models/{model}/versions", "/v1/models/{model}/rollout", "/v1/models/{model}/rollback"), TRAINED
    ),
}
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, response_schema_conformance]

# The operations of the document the app serves, known before the cluster starts (the same
# factory builds it); test_live_document_has_these_operations holds them equal.
OPERATIONS = sorted(
    (method.upper(), path) for path, item in reference_app().openapi()["paths"].items() for method in item
)

CONFIG = schemathesis.Config.from_dict({"request-timeout": 60})


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=CONFIG)


@pytest.fixture(scope="module")
def served_version(base_url: str) -> str:
    return str(httpx.get(f"{base_url}/v2/models/{MODEL}", timeout=60).json()["versions"][0])


def aim_at_the_served_model(case: schemathesis.Case, version: str, path: str) -> None:
    """Point the case at a served model of the operation's task (and its version) where it names a model.

    Generated names almost never name a real model, so without this nearly every request
    would stop at the 404 and the model routes behind it would go untested.
    """
    params: dict[str, Any] = case.path_parameters or {}
    if "model" not in params:
        return
    params["model"] = MODEL_FOR.get(path, MODEL)
    if "version" in params:
        params["version"] = version
    # Some routes also document `version` as an optional query parameter.
    if case.query and "version" in case.query:
        case.query["version"] = version


def dangling_refs(document: dict[str, Any]) -> list[str]:
    """Every local `$ref` of the document that points at nothing, as `where: ref`."""

    def resolves(ref: str) -> bool:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/") and not resolves(ref):
                found.append(f"{where}: {ref}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(document, "#")
    return found


# In OpenAPI 3.1 a `#/...` reference is resolved against the whole document: a `$defs`
# nested inside a request body schema cannot be reached (schemathesis would skip JSON bodies).
def test_openapi_document_references_all_resolve(base_url: str) -> None:
    document = httpx.get(f"{base_url}/openapi.json", timeout=60).json()
    assert dangling_refs(document) == []


def test_live_document_has_these_operations(api_schema: Any) -> None:
    live = sorted((op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations()))
    assert live == OPERATIONS


@pytest.fixture(scope="module")
def trained() -> str:
    """A trained model's records in the session's model store, as its version and rollout routes
    read them: one version, not rolled out (nothing here predicts with it)."""
    store = Store.at(str(session_store()))
    version = ModelVersion(
        name=TRAINED,
        version="0" * 12,
        base_model=MODEL,
        dataset="0" * 16,
        categories=REPORT.labels,
        created=0.0,
        report=REPORT,
    )
    write_json(store.version(TRAINED, version.version) / "version.json", version.model_dump())
    # No stable version: the catalogue lists only models that have one, and predicts with none.
    write_json(store.rollout(TRAINED), Rollout(name=TRAINED).model_dump())
    return TRAINED


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_answers_within_its_schema_when_fuzzed(
    api_schema: Any,
    base_url: str,
    served_version: str,
    trained: str,
    method: str,
    path: str,
    request: pytest.FixtureRequest,
) -> None:
    operation = api_schema[path][method]
    # Valid and invalid requests alike: the server must answer both without a 5xx.
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    statuses: Counter[int] = Counter()
    sent = itertools.count()

    # Seeded (derandomize), bounded, never shrunk, no example database: the same requests each run.
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def run(case: schemathesis.Case) -> None:
        # Every other case, in generation order (fixed: derandomized): half reach the model,
        # half keep their generated names and exercise the 404s.
        if next(sent) % 2 == 0:
            aim_at_the_served_model(case, served_version, path)
        response = case.call_and_validate(base_url=base_url, checks=CHECKS)
        statuses[response.status_code] += 1

    run()
    # For reports (junit XML, hooks): how the generated requests were answered.
    request.node.user_properties.append(("statuses", dict(sorted(statuses.items()))))
    assert statuses, "no request was sent"
    if "{model}" in path:
        assert set(statuses) - {404}, f"no request got past the model lookup: {statuses}"
