"""Request, parameter and response schemas of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Instance(_Strict):
    """One image in a JSON request, base64-encoded."""

    b64: str = Field(description="Base64 of the encoded image (JPEG, PNG or WebP).")


class PredictBody(_Strict):
    """JSON form of :predict, as KServe's v1 protocol: instances plus shared parameters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": [{"b64": "iVBORw0KGgo..."}], "parameters": {"top_k": 3}}]},
    )
    instances: list[Instance] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ClassificationParams(_Strict):
    """Parameters of a classifier's :predict (query string, form fields or JSON `parameters`)."""

    top_k: int = Field(5, ge=1, le=1000, description="Labels per image, highest score first.")


PARAMS_BY_TASK: dict[str, type[BaseModel]] = {"classification": ClassificationParams}


class Label(BaseModel):
    label: str
    index: int
    score: float


class ClassificationPrediction(BaseModel):
    labels: list[Label]


class PredictResponse(BaseModel):
    """One prediction per input image, in request order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "digits_cnn",
                    "model_version": "3f2a9c1b7d4e",
                    "weights": "bundled:digits_cnn.safetensors",
                    "predictions": [{"labels": [{"label": "7", "index": 7, "score": 0.98}]}],
                }
            ]
        }
    )
    model: str
    model_version: str
    weights: str = Field(description="`source:name` of the weights, or `random`.")
    warning: str | None = Field(None, description="Present when the weights are random.")
    predictions: list[ClassificationPrediction]


class TensorMeta(BaseModel):
    """A named tensor of the v2 view of a model."""

    name: str
    datatype: str
    shape: list[int]


class WeightsMeta(BaseModel):
    source: str
    name: str
    sha256: str | None
    version: str


class ModelMetadata(BaseModel):
    """A catalogue entry, read live from a replica (batching reflects reconfigure)."""

    name: str
    task: str
    family: str
    description: str
    input: dict[str, Any]
    labels: list[str]
    weights: WeightsMeta
    model_version: str
    outputs: list[TensorMeta]
    batching: dict[str, Any]
    device: str
    threads: int
    load_seconds: float
    started_at: float = Field(description="Unix time the answering replica finished loading.")


class ModelList(BaseModel):
    models: list[ModelMetadata]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every v1 error: a stable code and a message; never a traceback."""

    error: ErrorDetail


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined: nested `$defs` do not resolve in OpenAPI."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_ERRORS: dict[int, str] = {
    400: "Malformed request or undecodable image",
    401: "No API key, or an unknown one",
    403: "The API key may not use this model",
    404: "Unknown model, version or route",
    408: "Timed out",
    413: "Body, image bytes, pixel count or image count over the limit",
    415: "Unsupported content type or image format",
    422: "Valid request with invalid values",
    429: "Tenant over its rate limit or quota; retry after Retry-After seconds",
    503: "Model at capacity or restarting; retry after Retry-After seconds",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()
}


class V2Error(BaseModel):
    """Open Inference Protocol errors: a message only."""

    error: str


V2_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": text} for status, text in _ERRORS.items()
}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "image/webp": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer"},
                    },
                    "required": ["image"],
                }
            },
            "application/json": {
                "schema": inline_schema(PredictBody),
                "example": {"instances": [{"b64": "iVBORw0KGgo..."}], "parameters": {"top_k": 3}},
            },
        },
    }
}


class ModelCard(BaseModel):
    """What the ingress knows of a model without asking it (computed once by build_app)."""

    model_config = ConfigDict(frozen=True)
    name: str
    task: str
    version: str
    labels: list[str]
    input_shape: tuple[int, int, int]
    outputs: list[TensorMeta]


def _v2_infer_body() -> dict[str, Any]:
    from deployments.v2 import InferRequest  # the codec module; imported here to keep this one declarative

    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_schema(InferRequest)},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "Binary tensor data extension: the JSON header (its length in the "
                    "Inference-Header-Content-Length header), then each input's raw bytes.",
                },
            },
        }
    }


V2_INFER_REQUEST_BODY: dict[str, Any] = _v2_infer_body()
