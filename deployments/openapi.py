"""The OpenAPI pieces the routes declare: each route's error statuses and headers, request bodies
the routes parse themselves, media types and examples."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from contract.answers import PNG_B64_EXAMPLE
from contract.errors import ERROR_CODE_HEADER
from deployments.schemas import PARAMS_BY_TASK, ErrorBody, ExplainParams, PredictBody, inline_schema
from deployments.v2 import InferRequest, V2Error, V2ModelReady

# ---- OpenAPI pieces the routes declare -------------------------------------------------

_ERRORS: dict[int, str] = {
    400: "Malformed request or undecodable image",
    401: "No API key, or an unknown one",
    403: "The API key may not use this model",
    404: "Unknown model, version or route",
    406: "Accept: image/png with more than one image",
    408: "Timed out",
    409: "Conflicts with what exists (a configured model's name, a finished job, a version already stable)",
    413: "Body, image bytes, pixel count or image count over the limit",
    415: "Unsupported content type or image format",
    422: "Valid request with invalid values",
    429: "Tenant over its rate limit or quota; retry after Retry-After seconds",
    503: "Model at capacity or restarting; retry after Retry-After seconds",
}

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_ERROR_CODE: dict[str, Any] = {
    ERROR_CODE_HEADER: {
        "description": "The error's stable code, as in a v1 body (a v2 body carries only the message).",
        "schema": {"type": "string"},
    }
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "The Bearer challenge.", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def _error_responses(body: type[BaseModel], statuses: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        headers = _ERROR_CODE | _ERROR_HEADERS.get(status, {})
        responses[status] = {"model": body, "description": _ERRORS[status], "headers": headers}
    # Also stops FastAPI from documenting its own 422 shape, which our handler never sends.
    responses["default"] = {
        "model": body,
        "description": "Any other error, in the same shape (405; 500 for a bug)",
        "headers": _ERROR_CODE,
    }
    return responses


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses of a route's error statuses, and of any other, in the API's error shape."""
    return _error_responses(ErrorBody, statuses)


def v2_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """As `errors`, in the Open Inference Protocol's error shape (/v2 routes)."""
    return _error_responses(V2Error, statuses)


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI JSON request body for a route that parses its body itself (to answer 400, never 500)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}


def _binary(description: str | None = None) -> dict[str, Any]:
    """A media type whose body is raw bytes."""
    schema = {"type": "string", "format": "binary"} | ({"description": description} if description else {})
    return {"schema": schema}


_BINARY = _binary()


def _parameter_schemas(params: dict[str, type[BaseModel]]) -> dict[str, dict[str, Any]]:
    """Each parameter's JSON schema (nullable types made plain), naming the tasks that take it."""
    fields: dict[str, dict[str, Any]] = {}
    tasks: dict[str, list[str]] = {}
    for task, model in params.items():
        for name, schema in inline_schema(model)["properties"].items():
            # Query strings and form fields have no null: an omitted parameter takes its default.
            plain = {key: value for key, value in schema.items() if key not in ("title", "anyOf")}
            if plain.get("default", 0) is None:
                del plain["default"]
            plain |= next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), {})
            fields.setdefault(name, plain)
            tasks.setdefault(name, []).append(task)
    if len(params) > 1:  # a route shared by several tasks: say which tasks take each parameter
        for name, schema in fields.items():
            schema["description"] = f"{schema.get('description', '')} ({', '.join(tasks[name])})".strip()
    return fields


def image_route_openapi(
    params: dict[str, type[BaseModel]], json_example: dict[str, Any], *, video: bool = False
) -> dict[str, Any]:
    """Request body and query parameters of a route that takes images as a raw, multipart or JSON body.

    `params` maps each task (or the route) to its parameters' model; they are accepted in the
    query string, as multipart form fields, or as the JSON body's `parameters`.
    """
    fields = _parameter_schemas(params)
    form: dict[str, Any] = {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}}
    if video:
        form["video"] = {"type": "string", "format": "binary", "description": "A clip (video classifiers)."}
        form["frame"] = {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One clip as still frames, in order (video classifiers).",
        }
    raw: dict[str, Any] = {"image/jpeg": _BINARY, "image/png": _BINARY, "image/webp": _BINARY}
    raw["application/octet-stream"] = _binary("An image; its format is read from its bytes.")
    if video:
        clip = _binary("A clip (video classifiers).")
        raw |= {"video/mp4": clip, "video/webm": clip, "image/gif": clip}
    return {
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": schema.get("description", ""),
                "schema": {key: value for key, value in schema.items() if key != "description"},
            }
            for name, schema in fields.items()
        ],
        "requestBody": {
            "required": True,
            "content": {
                **raw,
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": form | fields, "required": ["image"]},
                    "encoding": {"image": {"contentType": "image/jpeg, image/png, image/webp"}},
                },
                "application/json": {"schema": inline_schema(PredictBody), "example": json_example},
            },
        },
    }


GENERATED_PNG_RESPONSE: dict[str, Any] = {
    "description": "JSON; or, with `Accept: image/png` and one image, the PNG itself with `X-Seed`, `X-Label` "
    "and `X-Model-Version` headers",
    "content": {"image/png": _BINARY},
}

METRICS_RESPONSE: dict[str, Any] = {
    "description": "Prometheus text exposition format",
    "content": {
        "text/plain": {
            "schema": {"type": "string"},
            "example": "# HELP ray_vision_maas_requests_total HTTP requests by model, route and status.\n"
            "# TYPE ray_vision_maas_requests_total counter\n"
            'ray_vision_maas_requests_total{model="digits_cnn",route="/v1/models/{model}:predict",status="200"} 12.0\n',
        }
    },
}

V2_BINARY_INFER_RESPONSE: dict[str, Any] = {
    "description": "JSON; or, when the request asks for binary outputs, that JSON (its length in the "
    "Inference-Header-Content-Length header) followed by each binary output's bytes",
    "content": {"application/octet-stream": _BINARY},
}


def not_ready_response(body: Any) -> dict[str, Any]:
    """The 503 of a readiness route: the protocol's answer, `ready: false`, not an error."""
    return {"model": body, "description": "Not ready"}


# A model's readiness (and its version's): 503 is `ready: false`, or a refused rate-limit check.
V2_MODEL_READY_RESPONSES = {**v2_errors(401, 403, 404, 429), 503: not_ready_response(V2ModelReady | V2Error)}


PREDICT_OPENAPI: dict[str, Any] = image_route_openapi(
    PARAMS_BY_TASK, {"instances": [{"b64": PNG_B64_EXAMPLE}], "parameters": {"top_k": 3}}, video=True
)
EXPLAIN_OPENAPI: dict[str, Any] = image_route_openapi(
    {"explain": ExplainParams}, {"instances": [{"b64": PNG_B64_EXAMPLE}], "parameters": {"target": "7", "alpha": 0.5}}
)


def _v2_infer_body() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": inline_schema(InferRequest),
                    "example": {
                        "id": "req-1",
                        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [PNG_B64_EXAMPLE]}],
                        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
                    },
                },
                "application/octet-stream": _binary(
                    "Binary tensor data extension: the JSON header (its length in the "
                    "Inference-Header-Content-Length header), then each input's raw bytes."
                ),
            },
        }
    }


V2_INFER_REQUEST_BODY: dict[str, Any] = _v2_infer_body()
