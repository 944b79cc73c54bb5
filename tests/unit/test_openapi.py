"""The OpenAPI document (served at /openapi.json and /docs), walked whole without a server.

Every operation is summarised and described; its request body and its 200 response have
schemas and examples; its errors are documented in the one error shape of its API
(`{"error": {"code", "message"}}`, or `{"error": msg}` on /v2); and every example matches its
own schema. tests/integration/test_v1_api.py holds the served document equal to this one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from deployments.rest.app import reference_app

DOCUMENT: dict[str, Any] = reference_app().openapi()
OPERATIONS = sorted((method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item)
IDS = [f"{method} {path}" for method, path in OPERATIONS]
ERROR_BODY = "#/components/schemas/ErrorBody"
V2_ERROR = "#/components/schemas/V2Error"
# Readiness answers 503 with the protocol's own body (`"ready": false`), which is not an error.
READINESS = {"#/components/schemas/V2ServerReady", "#/components/schemas/V2ModelReady"}


def operation(method: str, path: str) -> dict[str, Any]:
    found: dict[str, Any] = DOCUMENT["paths"][path][method.lower()]
    return found


def resolve(node: Any) -> Any:
    """`node` with every local `$ref` replaced by what it points at (the document has no cycles)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = DOCUMENT
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target)
        return {key: resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item) for item in node]
    return node


def examples_of(media: dict[str, Any]) -> list[Any]:
    """The examples given for a media type: its own, or its schema's (pydantic's `examples`)."""
    found = [media["example"]] if "example" in media else []
    found += [example["value"] for example in media.get("examples", {}).values()]
    schema = resolve(media.get("schema", {}))
    return found + list(schema.get("examples", []))


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return own.union(*(refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(item) for item in node))
    return set()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_operation_has_summary_and_description(method: str, path: str) -> None:
    op = operation(method, path)
    assert op.get("summary", "").strip()
    assert op.get("description", "").strip()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_ok_response_has_schema_and_example_for_every_operation(method: str, path: str) -> None:
    responses = operation(method, path)["responses"]
    successes = sorted(status for status in responses if status.startswith("2"))
    assert successes, "no success response"
    for status in successes:
        content = responses[status].get("content", {})
        if status == "204":
            assert not content, "a 204 response with content"
            continue
        assert content, f"the {status} response has no content"
        for media_type, media in content.items():
            assert media.get("schema"), f"{status} {media_type}: no schema"
            if media_type == "application/json" or media_type.startswith("text/"):
                assert examples_of(media), f"{status} {media_type}: no example"


# POSTs that change state with nothing to say but the URL.
ACTIONS = {("POST", "/v1/models/{model}/rollback")}


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_request_body_has_schemas_and_json_example_when_operation_takes_one(method: str, path: str) -> None:
    body = operation(method, path).get("requestBody")
    if method in ("GET", "DELETE") or (method, path) in ACTIONS:
        assert body is None
        return
    assert body is not None, "a POST without a documented body"
    assert body["content"], "a request body without content types"
    # JSON, or an upload (a file in a multipart part)
    assert {"application/json", "multipart/form-data"} & set(body["content"])
    for media_type, media in body["content"].items():
        assert media.get("schema"), f"{media_type}: no schema"
        if media_type == "application/json":
            assert examples_of(media), f"{media_type}: no example"


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_errors_are_documented_in_the_api_error_shape(method: str, path: str) -> None:
    op = operation(method, path)
    responses = op["responses"]
    error = V2_ERROR if path.startswith("/v2") else ERROR_BODY
    # The statuses every such operation can answer with, whatever its own checks.
    required = {"default"}
    if "{model}" in path:
        required.add("404")
    if op.get("security"):
        required |= {"401", "429"} | ({"403"} if "{model}" in path else set())
    if "requestBody" in op:
        required |= {"400", "413"}
    assert required <= set(responses), f"undocumented: {sorted(required - set(responses))}"
    for status, response in responses.items():
        if status == "default" or int(status) >= 400:
            assert list(response.get("content", {})) == ["application/json"], status
            schema = response["content"]["application/json"]["schema"]
            if status == "503" and path.endswith("/ready"):
                assert refs(schema) & READINESS, status
                assert refs(schema) <= READINESS | {error}, status
            else:
                assert schema == {"$ref": error}, status
            assert response.get("description"), status


def test_no_error_shape_other_than_the_apis_is_documented() -> None:
    # FastAPI documents its own 422 body unless told otherwise; our handler never sends it.
    assert "HTTPValidationError" not in DOCUMENT["components"]["schemas"]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_examples_match_their_schemas_in_operation(method: str, path: str) -> None:
    op = operation(method, path)
    media_types = list(op.get("requestBody", {}).get("content", {}).items())
    for response in op["responses"].values():
        media_types += list(response.get("content", {}).items())
    for media_type, media in media_types:
        validator = Draft202012Validator(resolve(media["schema"]))
        for example in examples_of(media):
            errors = [e.message for e in validator.iter_errors(example)]
            assert errors == [], f"{media_type}: {errors}"


@pytest.mark.parametrize("name", sorted(DOCUMENT["components"]["schemas"]))
def test_component_examples_match_the_component(name: str) -> None:
    schema = resolve(DOCUMENT["components"]["schemas"][name])
    validator = Draft202012Validator(schema)
    for example in schema.get("examples", []):
        assert [e.message for e in validator.iter_errors(example)] == []


def test_the_server_and_the_chart_state_the_packages_own_version() -> None:
    repo = Path(__file__).resolve().parents[2]
    version = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((repo / "k8s/helm/vision-maas/Chart.yaml").read_text())
    assert reference_app().version == version
    assert chart["appVersion"] == version
