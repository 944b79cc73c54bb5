"""The answers of the model routes, which the model families build: each task's prediction, a
generated image, an explanation map, and the envelopes the model replica returns. The ingress
serializes them once; the OpenAPI document declares these same classes. Torch-free, Ray-free."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Shared by the examples below: a truncated base64 PNG and the bundled digits classifier's version.
PNG_B64_EXAMPLE = "iVBORw0KGgo..."
DIGITS_VERSION_EXAMPLE = "73079991f5f4"


def examples(*values: dict[str, Any]) -> ConfigDict:
    """Model config whose JSON schema, and so the OpenAPI document, shows these examples."""
    return ConfigDict(json_schema_extra={"examples": list(values)})


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
            "model_version": "9fa5b5564776",
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
