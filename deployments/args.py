"""Typed application arguments: `applications[].args` of the Serve config, validated strictly."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.backends import Backend
from contract.tasks import MODEL_NAME
from deployments.batching import MIN_GAIN_PER_DOUBLING

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The most a model replica admits at once: Serve's own max_ongoing_requests for models is above it
# (deployments.app.MODEL_OPTIONS), so Serve never queues or refuses before the replica does.
MAX_REQUESTS = 4096


class BatchConfig(_Strict):
    """The `user_config` of a model deployment: dynamic batching, applied live by reconfigure()."""

    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="The most an item that finds the forward free waits for company. 0 (the default): a "
        "batch runs at once with the items waiting then. A wait makes fewer, larger batches, which saves "
        "device work at moderate load and costs latency (benchmarks/batchpolicy.py).",
    )
    target_p99_ms: float | None = Field(
        None,
        gt=0.0,
        le=600000.0,
        description="When set, the batch cap adapts (AIMD, up to max_batch_size) to hold this p99 latency "
        "of the replica's items; see deployments/batching.py.",
    )
    max_requests: int = Field(
        256,
        ge=1,
        le=MAX_REQUESTS,
        description="Requests the replica holds at once (computing, batched or waiting); one more is answered "
        "503 `overloaded` with Retry-After, in the API's JSON. It replaces Serve's max_ongoing_requests and "
        "max_queued_requests for models, whose overload answer is plain text.",
    )
    warmup: bool = Field(
        True,
        description="Run the model at batch 1 and at its batch cap before the replica reports ready, so the "
        "first requests do not pay for the allocator and kernel setup.",
    )
    measure: bool = Field(
        True,
        description="With warmup: time the forward at batch 1, 2, 4, ... up to max_batch_size while warming up "
        f"and cap batches at the size past which larger ones stop gaining {MIN_GAIN_PER_DOUBLING:.0%} items/s per "
        "doubling (deployments/batching.py); false keeps max_batch_size as the cap.",
    )


class ModelArgs(_Strict):
    """One served model: its URL name, the registry model behind it and its weights."""

    name: str = Field(description="Served name: URL segment and deployment name (lower snake case).")
    model: str | None = Field(None, description="Registry model; defaults to `name`.")
    weights: str | None = Field(
        None,
        description="Registry default if omitted; `random`; a torchvision weights name; or a file path.",
    )
    sha256: str | None = Field(None, description="Required pin for a weights file.")
    backend: Backend = Field(
        "eager",
        description="Inference backend of a classifier: `eager` PyTorch, `channels_last`, `onnx` (ONNX Runtime) "
        "or `int8` (dynamic quantization of Linear layers, CPU); see models/backends.py.",
    )

    @field_validator("name", "model")
    @classmethod
    def _snake_case(cls, value: str | None) -> str | None:
        if value is not None and not MODEL_NAME.fullmatch(value):
            raise ValueError(f"{value!r} must be lower snake case ([a-z][a-z0-9_]*)")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.fullmatch(value):
            raise ValueError("sha256 must be 64 hex digits")
        return value.lower() if value else value

    @property
    def registry_key(self) -> str:
        """The registry model this entry serves."""
        return self.model or self.name


class LimitsArgs(_Strict):
    """Request limits enforced by the ingress (bytes while reading) and replicas (pixels)."""

    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=64)
    max_images_per_request: int = Field(64, ge=1, le=4096)
    max_annotate_images: int = Field(16, ge=1, le=256, description="Images per /v1/images:annotate request.")
    max_video_frames: int = Field(512, ge=2, le=100_000, description="Decoded frames per clip.")
    max_video_seconds: float = Field(60.0, gt=0.0, description="Duration of one clip.")
    request_timeout_s: float = Field(60.0, gt=0.0)


class AuthArgs(_Strict):
    """API key authentication (deployments.auth). On unless a config turns it off explicitly."""

    enabled: bool = True
    keys_file: str | None = Field(None, description="YAML/JSON key store file (key hashes only).")
    keys_env: str = Field("VISION_MAAS_API_KEYS", description="Variable holding the key store when no file is set.")


class ArtifactsArgs(_Strict):
    """Signed weight manifests (models/manifest.py), checked by each replica before loading."""

    require_signatures: bool = Field(False, description="Refuse weights without a valid signed manifest.")
    public_keys_file: str | None = Field(
        None, description="PEM Ed25519 public key(s); `bundled` names the release key shipped with the package."
    )
    public_keys_env: str = Field("VISION_MAAS_SIGNING_KEYS", description="Variable holding PEM public keys.")


class DatasetLimits(_Strict):
    """What an uploaded data set archive may be (deployments/datasets.py); over any limit, it is refused whole."""

    max_archive_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="The upload itself.")
    max_entries: int = Field(20_000, ge=2, description="Members of the archive, folders included.")
    max_expanded_bytes: int = Field(1024 * 1024 * 1024, ge=1024, description="All members, uncompressed.")
    max_ratio: float = Field(100.0, ge=1.0, description="Uncompressed size over compressed size, per member.")
    min_classes: int = Field(2, ge=2)
    min_images_per_class: int = Field(5, ge=1)
    max_seconds: float = Field(
        600.0, gt=0.0, description="Reading, decoding and storing one archive; past it, 408 and nothing is kept."
    )


class TrainingArgs(_Strict):
    """Data sets, training jobs on Ray Train, trained versions and their rollouts (docs/training.md)."""

    enabled: bool = Field(False, description="The data set, training and rollout routes (admin scope) are on.")
    store: str = Field(
        "~/.vision-maas/store",
        description="The model store: data sets, jobs, trained versions and rollout state. On a cluster, a "
        "volume every node mounts at this path.",
    )
    storage_path: str | None = Field(
        None,
        description="Ray Train's storage path for checkpoints: a local directory or any pyarrow/fsspec URI "
        "(`s3://...`); default `<store>/checkpoints`.",
    )
    workers: int = Field(1, ge=1, le=256, description="Ray Train workers per job.")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="Each worker's CPUs; its torch threads follow.")
    use_gpu: bool | None = Field(None, description="None: a GPU per worker when the cluster has GPUs.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="Extra Ray resources per worker (say `training: 1`), to keep training on nodes set aside for it.",
    )
    niceness: int = Field(
        19,
        ge=-20,
        le=19,
        description="CPU niceness (Linux) of training's processes (the job queue, Ray Train's controller, its "
        "helpers and workers), from their start, relative to Ray's own: serving runs first wherever both share "
        "cores. A cluster that keeps training on nodes of its own (`resources_per_worker`) can leave it.",
    )
    max_failures: int = Field(2, ge=0, description="Worker failures a job survives, resuming from its last checkpoint.")
    max_running_jobs: int = Field(1, ge=1, description="Jobs training at once; more wait queued.")
    max_jobs_per_tenant: int = Field(4, ge=1, description="A tenant's jobs queued or running at once.")
    max_loaded_versions: int = Field(4, ge=1, description="Trained versions one replica keeps loaded.")
    signing_key_file: str | None = Field(
        None,
        description="PEM Ed25519 private key that signs trained versions (the deployment key, never the release key).",
    )
    encryption_key_id: str | None = Field(
        None,
        description="When set, a trained version's weights are stored encrypted at rest (AES-256-GCM, "
        "models/crypto.py) under this key of $VISION_MAAS_WEIGHTS_KEYS, as `model.safetensors.enc`; "
        "the replicas that serve trained versions need the same variable. Unset: plain safetensors.",
    )
    signing_key_env: str = Field(
        "VISION_MAAS_DEPLOY_SIGNING_KEY", description="Variable holding the PEM private key when no file is set."
    )
    one_hop: list[str] = Field(
        default_factory=list,
        description="Trained models whose `:predict` gets its own Serve application, as a configured model's "
        "does (deployments/topology.py): its replicas hold the stable version and answer HTTP themselves, and "
        "only a canary's share passes on, over a handle, to StoreModels. Other trained models are served "
        "through the catalogue (two hops).",
    )
    datasets: DatasetLimits = DatasetLimits()

    @field_validator("one_hop")
    @classmethod
    def _model_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(f"one_hop: {name!r} is not a model name")
        if len(set(names)) != len(names):
            raise ValueError("one_hop: a name is listed twice")
        return names


class AppArgs(_Strict):
    """Everything `build_app` needs: what is served, its limits and who may call it."""

    models: list[ModelArgs] = Field(min_length=1)
    limits: LimitsArgs = LimitsArgs()
    auth: AuthArgs = AuthArgs()
    artifacts: ArtifactsArgs = ArtifactsArgs()
    training: TrainingArgs = TrainingArgs()
    application: str | None = Field(
        None,
        description="The catalogue application's name: set by deployments.topology when it gives every model "
        "its own application (the models' applications then find the catalogue's rate limiter, and the "
        "catalogue finds the models, by name).",
    )

    @model_validator(mode="after")
    def _unique_and_known(self) -> AppArgs:
        # Imported here so that importing this module (the ingress does) never loads torch.
        from models.registry import Task, UnknownModel, get_entry

        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model {model.name!r} is configured twice")
            seen.add(model.name)
            try:
                entry = get_entry(model.registry_key)
            except UnknownModel as exc:
                raise ValueError(f"model {model.name!r}: {exc}") from None
            if model.backend != "eager" and entry.task != Task.CLASSIFICATION:
                raise ValueError(f"model {model.name!r}: backend {model.backend!r} runs classifiers only")
        configured = seen & set(self.training.one_hop)
        if configured:
            raise ValueError(f"training.one_hop: {sorted(configured)} are configured models, never trained ones")
        return self
