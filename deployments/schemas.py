"""Request, parameter and response schemas of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str
    message: str


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


class DetectionParams(_Strict):
    """Parameters of a detector's :predict."""

    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Drop detections scoring below this.")
    max_detections: int = Field(100, ge=1, le=1000, description="Detections per image, highest score first.")


class SegmentationParams(_Strict):
    """Parameters of a segmenter's :predict."""

    min_fraction: float = Field(0.0, ge=0.0, le=1.0, description="Omit classes covering less of the image.")


class DenoisingParams(_Strict):
    """Parameters of a denoiser's :predict."""

    return_latent: bool = Field(False, description="Also return the autoencoder's code vector.")


PARAMS_BY_TASK: dict[str, type[BaseModel]] = {
    "classification": ClassificationParams,
    "video_classification": ClassificationParams,
    "detection": DetectionParams,
    "segmentation": SegmentationParams,
    "denoising": DenoisingParams,
}


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
        None, ge=0, le=2**63 - 1, description="Same seed and parameters, same images; random when omitted."
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
                            "image": {"b64": "iVBORw0KGgo..."},
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
    responses: list[AnnotateImageResult]


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

ERROR_406: dict[str, Any] = {"model": ErrorBody, "description": "Accept: image/png with more than one image"}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()
}


class V2Error(BaseModel):
    """Open Inference Protocol errors: a message only."""

    error: str


V2_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": text} for status, text in _ERRORS.items()
}


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI JSON request body for a route that parses its body itself (to answer 400, never 500)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}


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
    input_shape: tuple[int, ...]
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]
    explainable: bool = False


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
