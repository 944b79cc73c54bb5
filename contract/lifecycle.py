"""The training and model-lifecycle contract: data sets, training jobs, evaluation reports,
model versions and rollouts. Server, client, CLI and playground share these shapes. Torch-free,
Ray-free."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.answers import examples
from contract.tasks import MODEL_NAME

# A version is named by its weights' hash (the first 12 hex digits of their sha256), as the
# bundled models' versions are; a data set by its archive's (the first 16).
VERSION_PATTERN = r"^[0-9a-f]{12}$"
DATASET_ID_PATTERN = r"^[0-9a-f]{16}$"

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RejectedFile(BaseModel):
    """One archive member that was not kept, and why."""

    file: str
    error: str


class Dataset(BaseModel):
    """A stored data set: labelled images, content-addressed by the archive they came in."""

    id: str = Field(pattern=DATASET_ID_PATTERN)
    classes: dict[str, int] = Field(description="label -> images kept")
    images: int
    rejected: list[RejectedFile] = Field(default_factory=list)
    created: float = Field(description="Unix time the data set was first stored.")


class DatasetList(BaseModel):
    datasets: list[Dataset]


class TrainingJobRequest(_Strict):
    """`POST /v1/training/jobs`: a new model (or a new version of one) fine-tuned from a base model."""

    name: str = Field(pattern=MODEL_NAME.pattern, description="The model to create or add a version to.")
    base_model: str = Field(description="A registered classifier: its backbone, with a new head for the data set.")
    dataset: str = Field(pattern=DATASET_ID_PATTERN)
    epochs: int = Field(5, ge=1, le=200)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    batch_size: int = Field(32, ge=1, le=1024)
    freeze_backbone: bool = False
    augment: bool = True
    val_fraction: float = Field(0.2, ge=0.05, le=0.5)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class Progress(BaseModel):
    """Where a running job is."""

    epoch: int
    epochs: int
    step: int
    loss: float | None = None
    val_accuracy: float | None = None
    elapsed_s: float
    eta_s: float | None = None


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class CurvePoint(BaseModel):
    epoch: int
    loss: float
    val_accuracy: float


class EvaluationReport(BaseModel):
    """A trained version measured on its held-out split (stratified, seeded)."""

    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    labels: list[str] = Field(description="Row and column order of the confusion matrix.")
    confusion_matrix: list[list[int]] = Field(description="Rows: true label; columns: predicted label.")
    curve: list[CurvePoint]
    train_images: int
    val_images: int


class TrainingJob(BaseModel):
    """A training job as the API shows it."""

    id: str
    status: JobStatus
    request: TrainingJobRequest
    tenant: str | None = None
    progress: Progress | None = None
    error: str | None = None
    version: str | None = Field(None, description="The version it produced, once succeeded.")
    report: EvaluationReport | None = None
    created: float
    started: float | None = None
    finished: float | None = None


class TrainingJobList(BaseModel):
    jobs: list[TrainingJob]


VersionState = Literal["stable", "canary", "previous", "inactive"]


class ModelVersion(BaseModel):
    """One immutable version of a trained model."""

    name: str
    version: str = Field(pattern=VERSION_PATTERN)
    base_model: str
    dataset: str
    categories: list[str]
    created: float
    job: str | None = None
    report: EvaluationReport
    state: VersionState = "inactive"
    percent: int = Field(0, description="Share of the model's :predict traffic this version answers.")


_REPORT_EXAMPLE = {
    "accuracy": 0.98,
    "macro_precision": 0.98,
    "macro_recall": 0.98,
    "macro_f1": 0.98,
    "per_class": {
        "circle": {"precision": 1.0, "recall": 0.96, "f1": 0.98, "support": 25},
        "square": {"precision": 0.96, "recall": 1.0, "f1": 0.98, "support": 25},
    },
    "labels": ["circle", "square"],
    "confusion_matrix": [[24, 1], [0, 25]],
    "curve": [{"epoch": 1, "loss": 0.41, "val_accuracy": 0.9}, {"epoch": 2, "loss": 0.12, "val_accuracy": 0.98}],
    "train_images": 200,
    "val_images": 50,
}


class ModelVersionList(BaseModel):
    model_config = examples(
        {
            "name": "shapes",
            "versions": [
                {
                    "name": "shapes",
                    "version": "4f1c2a9b7e3d",
                    "base_model": "digits_cnn",
                    "dataset": "9a8b7c6d5e4f3a2b",
                    "categories": ["circle", "square"],
                    "created": 1796000000.0,
                    "job": "j-5d41402abc4b",
                    "report": _REPORT_EXAMPLE,
                    "state": "stable",
                    "percent": 80,
                }
            ],
        }
    )
    name: str
    versions: list[ModelVersion]


class RolloutRequest(_Strict):
    """`POST /v1/models/{model}/rollout`: send `percent` of :predict to `version`; 100 promotes it."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"version": "7d2e9c1a0b5f", "percent": 20}]}
    )

    version: str = Field(pattern=VERSION_PATTERN)
    percent: int = Field(ge=1, le=100)


class Rollout(BaseModel):
    """Which versions answer a model's :predict: the stable one, and a canary with its share."""

    model_config = examples(
        {"name": "shapes", "stable": "4f1c2a9b7e3d", "canary": "7d2e9c1a0b5f", "percent": 20, "history": []}
    )

    name: str
    stable: str | None = None
    canary: str | None = None
    percent: int = Field(0, ge=0, le=100, description="The canary's share of :predict.")
    history: list[str] = Field(default_factory=list, description="Earlier stable versions, latest last.")
