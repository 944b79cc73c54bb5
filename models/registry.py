"""The model registry: typed, frozen specs, looked up by name; duplicate names are refused."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel

from contract.tasks import MODEL_NAME, Task

__all__ = ["Task"]  # defined in contract.tasks; the model families import it from here too


# Modules whose import registers the built-in families (kept lazy: no work at import time).
_BUILTIN_FAMILIES: tuple[str, ...] = (
    "models.classifiers",
    "models.digits",
    "models.detectors",
    "models.segmenters",
    "models.dcgan",
    "models.denoisers",
    "models.video",
)


class UnknownModel(KeyError):
    """No registered model has this name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


WeightsSource = Literal["bundled", "torchvision", "file", "random"]


@dataclass(frozen=True)
class WeightsInfo:
    """Where a spec's weights come from; shown in metadata and in every response."""

    source: WeightsSource
    name: str
    sha256: str | None = None
    # The version's own name where the file's hash is not it: a trained version encrypted at rest
    # is named by its plain weights' hash (models/trained.py).
    named: str | None = None

    @property
    def version(self) -> str:
        """A short version string that changes whenever the weights do."""
        if self.source == "random":
            return "random"
        if self.named:
            return self.named
        if self.sha256:
            return self.sha256[:12]
        return self.name

    @property
    def label(self) -> str:
        """`source:name`, or `random` for untrained weights."""
        return "random" if self.source == "random" else f"{self.source}:{self.name}"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the Open Inference Protocol view of a model; -1 is a variable dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def stack_and_forward(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> list[Any]:
    """Default batch forward: stack same-shape inputs, one forward pass, split per item."""
    batch = torch.stack(list(inputs))
    return list(module(batch).unbind(0))


Preprocess = Callable[[Image.Image], torch.Tensor]
ClipPreprocess = Callable[[Sequence[Image.Image]], torch.Tensor]
"""Video: the decoded frames of one clip, in order -> one input tensor (T, C, H, W)."""
Sample = Callable[[int, int, Mapping[str, Any]], list[torch.Tensor]]
"""Generation: (num_images, seed, parameters) -> one input tensor per image; same seed, same tensors."""
Affine = tuple[float, float, float, float, float, float]
"""(a, b, c, d, e, f): model-input point (u, v) -> original point (a*u + b*v + c, d*u + e*v + f).

Continuous pixel coordinates, as Pillow uses: pixel i covers [i, i + 1).
"""
InputGeometry = Callable[[Image.Image], Affine]
"""Where the model input lies in the original image (resize, crop, digit crop); for explanation maps."""
ParamsT = TypeVar("ParamsT")


@dataclass(frozen=True)
class Item(Generic[ParamsT]):
    """What postprocess gets of one input besides the model's output."""

    params: ParamsT
    """The task's parameters (contract.params), validated once, by the API; None for generated images."""
    size: tuple[int, int] | None = None
    """(width, height) of the decoded original image, or of a clip's first frame, so results map
    back to original pixels; None where there is no original (generated images)."""


Postprocess = Callable[[Sequence[Any], Sequence[Item[Any]]], Sequence[BaseModel]]
"""(per-item forward outputs, per-item parameters and size) -> the task's answer (contract.answers) per item."""
TensorOutputs = Callable[[Sequence[Any]], dict[str, np.ndarray]]
BatchForward = Callable[[torch.nn.Module, Sequence[torch.Tensor]], list[Any]]


@dataclass(frozen=True)
class ModelSpec:
    """Everything the serving layer needs to run one model; no Ray, no HTTP."""

    name: str
    task: Task
    build: Callable[[], torch.nn.Module]
    preprocess: Preprocess
    postprocess: Postprocess
    tensor_outputs: TensorOutputs
    outputs: tuple[TensorSpec, ...]
    categories: tuple[str, ...]
    input_size: tuple[int, int]
    weights: WeightsInfo
    image_mode: str = "RGB"
    family: str = ""
    description: str = ""
    forward: BatchForward = field(default=stack_and_forward)
    preprocess_clip: ClipPreprocess | None = None
    clip_length: int = 0
    sample: Sample | None = None
    latent_shape: tuple[int, ...] = ()
    input_geometry: InputGeometry | None = None
    explain_layer: str | None = None
    """Submodule whose output Grad-CAM explains; None: the last spatial feature map."""
    held_out: Callable[[int | None], Any] | None = None
    """The bundled held-out set (models.heldout) that models.evaluate scores: at most `limit` items."""
    decode_min_side: int | None = None
    """For :predict, the shortest side preprocessing needs: JPEGs may decode at a reduced scale."""

    @property
    def channels(self) -> int:
        """Channels of the preprocessed tensor."""
        return len(Image.new(self.image_mode, (1, 1)).getbands())

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input: (C, H, W) image, (T, C, H, W) clip, or the latent's shape."""
        if self.task == Task.GENERATION:
            return self.latent_shape
        if self.task == Task.VIDEO_CLASSIFICATION:
            return (self.clip_length, self.channels, *self.input_size)
        return (self.channels, *self.input_size)

    @property
    def explainable(self) -> bool:
        """Whether `:explain` applies (classifiers of single images)."""
        return self.task == Task.CLASSIFICATION


SpecFactory = Callable[[str, "str | None", "str | None"], ModelSpec]
"""(served name, weights, sha256) -> ModelSpec; weights None means the entry's default."""


@dataclass(frozen=True)
class RegistryEntry:
    """A registered model: how to make its spec for a weights choice."""

    key: str
    task: Task
    family: str
    factory: SpecFactory


_REGISTRY: dict[str, RegistryEntry] = {}
_builtins_loaded = False


def validate_name(name: str) -> str:
    """Return `name` if it is lower snake case (it becomes a URL segment and deployment name)."""
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"model name {name!r} must be lower snake case ([a-z][a-z0-9_]*)")
    return name


def register(key: str, task: Task, factory: SpecFactory, *, family: str) -> None:
    """Add a model to the registry; a name already taken is an error."""
    validate_name(key)
    if key in _REGISTRY:
        raise ValueError(f"model {key!r} is already registered (family {_REGISTRY[key].family})")
    _REGISTRY[key] = RegistryEntry(key, task, family, factory)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_FAMILIES:
            importlib.import_module(module)


def get_entry(key: str) -> RegistryEntry:
    """The registry entry for `key`, or UnknownModel with the closest names."""
    _load_builtins()
    try:
        return _REGISTRY[key]
    except KeyError:
        close = difflib.get_close_matches(key, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModel(f"unknown model {key!r}{hint}") from None


def get_spec(key: str, weights: str | None = None, sha256: str | None = None, name: str | None = None) -> ModelSpec:
    """Resolve a spec: registry `key`, a weights choice, served under `name` (default `key`)."""
    entry = get_entry(key)
    return entry.factory(validate_name(name or key), weights, sha256)


def list_models(task: Task | None = None) -> list[str]:
    """Sorted names of every registered model, optionally of one task."""
    _load_builtins()
    return sorted(k for k, e in _REGISTRY.items() if task is None or e.task == task)
