"""Each task's request parameters, their defaults and bounds written once: the API validates a
request's parameters with them (so they make the OpenAPI document), once, and the model families
receive the validated object (models.registry.Item) and check nothing again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.tasks import Task

# The largest seed :generate takes (and a random one is drawn below).
MAX_SEED = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, values: Any) -> Any:
        """`true` as a threshold or a count is a client's mistake, not 1 (pydantic would take it)."""
        if isinstance(values, Mapping):
            for name, value in values.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and field.annotation not in (bool, "bool"):
                    raise ValueError(f"{name}: a number is needed, not {str(value).lower()}")
        return values


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

    @property
    def wanted(self) -> int | str | None:
        """The class asked for: its index, its label, or None for the top-1 class."""
        return self.target_index if self.target_index is not None else self.target


# Keyed by the task's name (Task is a str), as model cards and requests carry it.
PARAMS_BY_TASK: dict[str, type[BaseModel]] = {
    Task.CLASSIFICATION: ClassificationParams,
    Task.VIDEO_CLASSIFICATION: ClassificationParams,
    Task.DETECTION: DetectionParams,
    Task.SEGMENTATION: SegmentationParams,
    Task.DENOISING: DenoisingParams,
}
