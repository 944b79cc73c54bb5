"""Request, parameter and response schemas of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.errors import ERROR_CODE_HEADER
from contract.params import (
    MAX_SEED,
    PARAMS_BY_TASK,
    ClassificationParams,
    DenoisingParams,
    DetectionParams,
    SegmentationParams,
)

# Re-exported: the routes and the OpenAPI helpers below take the task parameters from here.
__all__ = ["PARAMS_BY_TASK", "ClassificationParams", "DenoisingParams", "DetectionParams", "SegmentationParams"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Shared by the examples below: a truncated base64 PNG and the bundled digits classifier's version.
PNG_B64_EXAMPLE = "iVBORw0KGgo..."
DIGITS_VERSION_EXAMPLE = "36946e7040bb"


def examples(*values: dict[str, Any]) -> ConfigDict:
    """Model config whose JSON schema, and so the OpenAPI document, shows these examples."""
    return ConfigDict(json_schema_extra={"examples": list(values)})


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable and machine-readable, e.g. `model_not_found`.")
    message: str = Field(description="For people; never a traceback or a path.")


class Instance(_Strict):
    """One image in a JSON request, base64-encoded; for video models, a clip or its frames."""

    b64: str | None = Field(None, description="Base64 of the encoded image (JPEG, PNG, WebP) or video clip.")
    frames: list[str] | None = Field(
        None, description="Video models: one clip as base64 still frames, in order.", min_length=1
    )

    @model_validator(mode="after")
    def _one_source(self) -> Instance:
        if (self.b64 is None) == (self.frames is None):
            raise ValueError("give exactly one of b64 or frames")
        return self


class PredictBody(_Strict):
    """JSON form of :predict and :explain, as KServe's v1 protocol: instances plus shared parameters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": [{"b64": PNG_B64_EXAMPLE}], "parameters": {"top_k": 3}}]},
    )
    instances: list[Instance] = Field(min_length=1)
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="The route's parameters, as in the query string (e.g. `top_k`)."
    )


class ExplainParams(_Strict):
    """Parameters of :explain."""

    target: str | None = Field(None, description="Label to explain; the top-1 label when omitted.")
    target_index: int | None = Field(None, ge=0, description="Class index to explain (instead of `target`).")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Heatmap opacity in the overlay.")

    @model_validator(mode="after")
    def _one_target(self) -> ExplainParams:
        if self.target is not None and self.target_index is not None:
            raise ValueError("give target or target_index, not both")
        return self

    def for_model(self) -> dict[str, Any]:
        """The parameters as the model layer takes them (one `target`: label or index)."""
        return {"target": self.target_index if self.target_index is not None else self.target, "alpha": self.alpha}


class GenerateBody(_Strict):
    """:generate request."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"num_images": 4, "seed": 42, "label": "7"}]}
    )
    num_images: int = Field(1, ge=1, le=64, description="Images to generate (bounded by the server's limit).")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Same seed and parameters, same images; random when omitted."
    )
    label: int | str | None = Field(None, description="Class to generate (conditional models); random when omitted.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Model-specific parameters.")

    def for_model(self) -> dict[str, Any]:
        """Model-layer parameters: `parameters` plus the label when given."""
        return {**self.parameters, **({"label": self.label} if self.label is not None else {})}


class Label(BaseModel):
    label: str
    index: int
    score: float


class ClassificationPrediction(BaseModel):
    labels: list[Label]


class Detection(BaseModel):
    label: str
    index: int
    score: float
    box: list[float] = Field(description="x1, y1, x2, y2 in original-image pixels.", min_length=4, max_length=4)


class DetectionPrediction(BaseModel):
    detections: list[Detection]


class ClassFraction(BaseModel):
    label: str
    index: int
    fraction: float


class SegmentationPrediction(BaseModel):
    mask: str = Field(description="Base64 PNG, mode L, original size; each pixel's value is its class index.")
    mask_format: str
    size: list[int]
    classes: list[ClassFraction]


class DenoisingPrediction(BaseModel):
    image: str = Field(description="Base64 PNG of the restored image at the original size.")
    size: list[int]
    latent: list[float] | None = Field(None, description="The autoencoder's code vector (return_latent).")


Prediction = ClassificationPrediction | DetectionPrediction | SegmentationPrediction | DenoisingPrediction


class GeneratedImage(BaseModel):
    image: str = Field(description="Base64 PNG.")
    label: str
    index: int


class GenerateResponse(BaseModel):
    """Generated images, and the seed that reproduces them."""

    model_config = examples(
        {
            "model": "digits_dcgan",
            "model_version": "126853d42dbd",
            "weights": "bundled:digits_dcgan.safetensors",
            "seed": 42,
            "images": [{"image": PNG_B64_EXAMPLE, "label": "7", "index": 7}],
        }
    )
    model: str
    model_version: str
    weights: str
    warning: str | None = None
    seed: int
    images: list[GeneratedImage]


class Explanation(BaseModel):
    label: str
    index: int
    score: float
    method: Literal["grad_cam", "attention_rollout"]
    heatmap: str = Field(description="Base64 PNG, greyscale, original size: brighter is more important.")
    overlay: str = Field(description="Base64 PNG: the heatmap in colour over the original image.")
    size: list[int]


class ExplainResponse(BaseModel):
    """One explanation per input image, in request order."""

    model_config = examples(
        {
            "model": "digits_cnn",
            "model_version": DIGITS_VERSION_EXAMPLE,
            "weights": "bundled:digits_cnn.safetensors",
            "explanations": [
                {
                    "label": "7",
                    "index": 7,
                    "score": 0.98,
                    "method": "grad_cam",
                    "heatmap": PNG_B64_EXAMPLE,
                    "overlay": PNG_B64_EXAMPLE,
                    "size": [64, 64],
                }
            ],
        }
    )
    model: str
    model_version: str
    weights: str
    warning: str | None = None
    explanations: list[Explanation]


class AnnotateImage(_Strict):
    b64: str = Field(description="Base64 of the encoded image (JPEG, PNG or WebP).")


class Feature(_Strict):
    model: str = Field(description="A served image model (classification, detection, segmentation, denoising).")
    parameters: dict[str, Any] = Field(default_factory=dict)


class AnnotateRequest(_Strict):
    image: AnnotateImage
    features: list[Feature] = Field(min_length=1, max_length=16)


class AnnotateBody(_Strict):
    """Several models on each image; every image is decoded once and shared by its model calls."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "requests": [
                        {
                            "image": {"b64": PNG_B64_EXAMPLE},
                            "features": [
                                {"model": "digits_detector", "parameters": {"score_threshold": 0.6}},
                                {"model": "digits_segmenter"},
                            ],
                        }
                    ]
                }
            ]
        },
    )
    requests: list[AnnotateRequest] = Field(min_length=1)


class FeatureResult(BaseModel):
    model: str
    model_version: str | None = None
    result: dict[str, Any] | None = Field(None, description="The model's prediction for this image.")
    error: ErrorDetail | None = Field(None, description="Why this feature failed; the others are unaffected.")


class AnnotateImageResult(BaseModel):
    features: list[FeatureResult] = Field(default_factory=list)
    error: ErrorDetail | None = Field(None, description="The image itself could not be used.")


class AnnotateResponse(BaseModel):
    """One result per image, in request order; a failed feature does not fail the others."""

    model_config = examples(
        {
            "responses": [
                {
                    "features": [
                        {
                            "model": "digits_detector",
                            "model_version": "4f22bc8f5559",
                            "result": {
                                "detections": [{"label": "3", "index": 3, "score": 0.97, "box": [4.0, 6.0, 30.0, 34.0]}]
                            },
                        },
                        {
                            "model": "digits_segmenter",
                            "error": {
                                "code": "timeout",
                                "message": "model 'digits_segmenter' did not answer within 60.0s",
                            },
                        },
                    ]
                }
            ]
        }
    )
    responses: list[AnnotateImageResult]


class PredictResponse(BaseModel):
    """One prediction per input image, in request order."""

    model_config = examples(
        {
            "model": "digits_cnn",
            "model_version": DIGITS_VERSION_EXAMPLE,
            "weights": "bundled:digits_cnn.safetensors",
            "predictions": [{"labels": [{"label": "7", "index": 7, "score": 0.98}]}],
        }
    )
    model: str
    model_version: str
    weights: str = Field(description="`source:name` of the weights, or `random`.")
    warning: str | None = Field(None, description="Present when the weights are random.")
    predictions: list[Prediction]


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


_MODEL_METADATA_EXAMPLE: dict[str, Any] = {
    "name": "digits_cnn",
    "task": "classification",
    "family": "bundled.digits",
    "description": "CNN trained on scikit-learn's handwritten digits (models/training/train_digits_cnn.py)",
    "input": {"size": [28, 28], "channels": 1, "mode": "L", "shape": [1, 28, 28]},
    "labels": [str(digit) for digit in range(10)],
    "weights": {
        "source": "bundled",
        "name": "digits_cnn.safetensors",
        "sha256": "36946e7040bb5d69497a3d2219b5e9b20df890c3b90dd8f4aa4e53907950b3f8",
        "version": DIGITS_VERSION_EXAMPLE,
    },
    "model_version": DIGITS_VERSION_EXAMPLE,
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
    ],
    "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.005},
    "device": "cpu",
    "threads": 1,
    "backend": "eager",
    "load_seconds": 0.412,
    "started_at": 1767225600.0,
}


class ModelMetadata(BaseModel):
    """A catalogue entry, read live from a replica (batching reflects reconfigure)."""

    model_config = examples(_MODEL_METADATA_EXAMPLE)
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
    backend: str = Field("eager", description="Inference backend: eager, channels_last, onnx or int8.")
    load_seconds: float
    started_at: float = Field(description="Unix time the answering replica finished loading.")


class ModelList(BaseModel):
    """The models this caller may use."""

    model_config = examples({"models": [_MODEL_METADATA_EXAMPLE]})
    models: list[ModelMetadata]


class ErrorBody(BaseModel):
    """Every v1 error: a stable code and a message; never a traceback."""

    model_config = examples(
        {"error": {"code": "model_not_found", "message": "model 'nope' is not served; see GET /v1/models"}}
    )
    error: ErrorDetail


class HealthStatus(BaseModel):
    """The ingress answers."""

    model_config = examples({"status": "ok"})
    status: Literal["ok"]


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


class ModelCard(BaseModel):
    """What the ingress knows of a model without asking it (computed once by build_app)."""

    model_config = ConfigDict(frozen=True)
    name: str
    task: str
    version: str
    labels: list[str]
    input_shape: tuple[int, ...]
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]
    explainable: bool = False


# ---- Open Inference Protocol v2 responses (the shapes KServe and Triton define) ----------


class V2Error(BaseModel):
    """Open Inference Protocol errors: a message only."""

    model_config = examples({"error": "model 'nope' is not served; see GET /v1/models"})
    error: str


class V2ServerMetadata(BaseModel):
    """Server metadata, with the protocol extensions it supports."""

    model_config = examples(
        {"name": "vision-maas", "version": "0.1.0", "extensions": ["binary_tensor_data", "classification"]}
    )
    name: str
    version: str
    extensions: list[str]


class V2ServerLive(BaseModel):
    """Server liveness."""

    model_config = examples({"live": True})
    live: bool


class V2ServerReady(BaseModel):
    """Server readiness: ready only when every model answers (503 otherwise)."""

    model_config = examples({"ready": True})
    ready: bool


class V2ModelMetadata(BaseModel):
    """A model's tensors: a request sends any ONE of its inputs."""

    model_config = examples(
        {
            "name": "digits_cnn",
            "versions": [DIGITS_VERSION_EXAMPLE],
            "platform": "pytorch",
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
            ],
        }
    )
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta] = Field(description="`image`: encoded images (BYTES); `input`: preprocessed tensors.")
    outputs: list[TensorMeta]


class V2ModelReady(BaseModel):
    """A model's readiness (503 while it is not ready)."""

    model_config = examples({"name": "digits_cnn", "ready": True})
    name: str
    ready: bool


class TritonTensorConfig(BaseModel):
    """A tensor of Triton's model configuration; `dims` leave out the batch dimension."""

    name: str
    data_type: str
    dims: list[int]


class V2ModelConfig(BaseModel):
    """Triton's model configuration, as tritonclient and perf_analyzer read it."""

    model_config = examples(
        {
            "name": "digits_cnn",
            "platform": "pytorch",
            "max_batch_size": 16,
            "input": [
                {"name": "image", "data_type": "TYPE_STRING", "dims": [1]},
                {"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]},
            ],
            "output": [
                {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
                {"name": "logits", "data_type": "TYPE_FP32", "dims": [10]},
            ],
        }
    )
    name: str
    platform: str
    max_batch_size: int
    input: list[TritonTensorConfig]
    output: list[TritonTensorConfig]


class BatchStats(BaseModel):
    """Batches of one size executed by the replica, and their total compute time."""

    batch_size: int
    count: int
    seconds: float


class ModelStats(BaseModel):
    name: str
    version: str
    inference_count: int = Field(description="Inputs inferred.")
    execution_count: int = Field(description="Batches executed.")
    batch_stats: list[BatchStats]


class V2ModelStats(BaseModel):
    """Triton's statistics extension, for the replica that answered."""

    model_config = examples(
        {
            "model_stats": [
                {
                    "name": "digits_cnn",
                    "version": DIGITS_VERSION_EXAMPLE,
                    "inference_count": 40,
                    "execution_count": 3,
                    "batch_stats": [
                        {"batch_size": 8, "count": 2, "seconds": 0.0121},
                        {"batch_size": 24, "count": 1, "seconds": 0.0183},
                    ],
                }
            ]
        }
    )
    model_stats: list[ModelStats]


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size` when the tensor's bytes follow the JSON (binary tensor data extension)."
    )
    data: list[Any] | None = Field(None, description="Row-major values; absent when sent as binary data.")


class V2InferResponse(BaseModel):
    """Inference outputs (JSON; with binary outputs, this JSON is the header of the body)."""

    model_config = examples(
        {
            "model_name": "digits_cnn",
            "model_version": DIGITS_VERSION_EXAMPLE,
            "id": "req-1",
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [1, 10],
                    "data": [0.001, 0.002, 0.004, 0.001, 0.003, 0.001, 0.0, 0.981, 0.004, 0.003],
                }
            ],
        }
    )
    model_name: str
    model_version: str
    id: str | None = Field(None, description="The request's `id`, when it has one.")
    outputs: list[V2OutputTensor]


# ---- OpenAPI pieces the routes declare -------------------------------------------------

_ERRORS: dict[int, str] = {
    400: "Malformed request or undecodable image",
    401: "No API key, or an unknown one",
    403: "The API key may not use this model",
    404: "Unknown model, version or route",
    406: "Accept: image/png with more than one image",
    408: "Timed out",
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
    from deployments.v2 import InferRequest  # the codec module; imported here to keep this one declarative

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
