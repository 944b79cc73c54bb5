"""The v1 API's request, parameter and response schemas, and what both protocols share (model
cards, tensor metadata, the error body). The v2 shapes live with its codec in deployments/v2.py,
the OpenAPI pieces the routes declare in deployments/openapi.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.answers import DIGITS_VERSION_EXAMPLE, PNG_B64_EXAMPLE, examples
from contract.params import (
    MAX_SEED,
    PARAMS_BY_TASK,
    ClassificationParams,
    DenoisingParams,
    DetectionParams,
    ExplainParams,
    SegmentationParams,
)

# Re-exported: the routes and the OpenAPI helpers take the parameters from here.
__all__ = [
    "PARAMS_BY_TASK",
    "ClassificationParams",
    "DenoisingParams",
    "DetectionParams",
    "ExplainParams",
    "SegmentationParams",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
                            "model_version": "cfd32de63868",
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
        "sha256": "73079991f5f4c3af1f9c8157fbf9cbe921f38f33c966edc8e44024068b940317",
        "version": DIGITS_VERSION_EXAMPLE,
    },
    "model_version": DIGITS_VERSION_EXAMPLE,
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
    ],
    "batching": {
        "max_batch_size": 16,
        "batch_wait_timeout_s": 0.0,
        "warmup": True,
        "measure": True,
        "measured_cap": 8,
        "items_per_s": {"1": 890.0, "2": 1190.0, "4": 1560.0, "8": 1820.0, "16": 1800.0},
    },
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
