"""Every torchvision classification model by name, with the preprocessing of its weights."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models import WeightsEnum
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification
from torchvision.transforms.v2 import functional as tvf

from contract.answers import ClassificationPrediction, Label
from contract.params import ClassificationParams
from models import weights as wsrc
from models.registry import Affine, InputGeometry, Item, ModelSpec, Postprocess, Task, TensorSpec, WeightsInfo, register

_FILE_SUFFIXES = (".safetensors", ".pt", ".pth")


def classification_postprocess(categories: Sequence[str]) -> Postprocess:
    """Batch postprocess: softmax, then each item's own top_k labels sorted by score."""

    def postprocess(
        outputs: Sequence[torch.Tensor], items: Sequence[Item[ClassificationParams]]
    ) -> list[ClassificationPrediction]:
        probs = torch.softmax(torch.stack(list(outputs)).float(), dim=1)
        ks = [min(item.params.top_k, probs.shape[1]) for item in items]
        scores, indices = probs.topk(max(ks), dim=1)
        return [
            ClassificationPrediction(
                labels=[
                    Label(label=categories[i], index=i, score=s)
                    for s, i in zip(scores[row, :k].tolist(), indices[row, :k].tolist(), strict=True)
                ]
            )
            for row, k in enumerate(ks)
        ]

    return postprocess


def classification_tensors(outputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Open Inference Protocol outputs of a classifier: logits and softmax probabilities."""
    logits = torch.stack(list(outputs)).float()
    return {
        "probabilities": torch.softmax(logits, dim=1).numpy(),
        "logits": logits.numpy(),
    }


def classification_outputs(num_classes: int) -> tuple[TensorSpec, ...]:
    """The v2 output tensors of a classifier with `num_classes` classes."""
    return (
        TensorSpec("probabilities", "FP32", (-1, num_classes)),
        TensorSpec("logits", "FP32", (-1, num_classes)),
    )


def _weights_enum(key: str) -> type[WeightsEnum]:
    enum_cls: type[WeightsEnum] = torchvision.models.get_model_weights(key)
    return enum_cls


def resolve_torchvision_weights(key: str, weights: str, *, other_choices: Sequence[str] = ()) -> WeightsEnum:
    """The weights of torchvision model `key` named `weights`: DEFAULT, IMAGENET1K_V2 or ResNet50_Weights.IMAGENET1K_V2."""
    enum_cls = _weights_enum(key)
    member = weights.split(".", 1)[1] if weights.startswith(f"{enum_cls.__name__}.") else weights
    try:
        return enum_cls[member] if member != "DEFAULT" else enum_cls.DEFAULT
    except KeyError:
        names = ", ".join(["DEFAULT", *(member.name for member in enum_cls), *other_choices])
        raise wsrc.WeightsError(f"{key}: unknown weights {weights!r}; choose one of {names}") from None


@dataclass(frozen=True)
class WeightsChoice:
    """A torchvision model's resolved weights choice: its metadata, its label, where its state comes from."""

    meta: WeightsEnum  # categories and preprocessing (the DEFAULT weights' for random weights and files)
    info: WeightsInfo
    builder: WeightsEnum | None = None  # torchvision weights, read weights-only at build time
    load: Callable[[], wsrc.StateDict] | None = None  # a local file, checked against its pin

    def state(self) -> wsrc.StateDict | None:
        """The state dict to load into the architecture; None for random weights."""
        if self.builder is not None:
            return wsrc.fetch_torchvision(self.builder)
        return self.load() if self.load is not None else None


def resolve_weights_choice(key: str, name: str, weights: str | None, sha256: str | None) -> WeightsChoice:
    """Resolve `weights` of torchvision model `key`: a weights name (default DEFAULT), `random`, or a pinned file."""
    choice = weights or "DEFAULT"
    if choice == "random":
        return WeightsChoice(_weights_enum(key).DEFAULT, WeightsInfo("random", "random"))
    if choice.endswith(_FILE_SUFFIXES) or "/" in choice:
        if not sha256:
            raise wsrc.WeightsError(f"{name}: weights file {Path(choice).name} needs a sha256 pin")
        path = Path(choice)
        return WeightsChoice(
            _weights_enum(key).DEFAULT,
            WeightsInfo("file", path.name, sha256.lower()),
            load=functools.partial(wsrc.load_state_dict_file, path, sha256),
        )
    meta = resolve_torchvision_weights(key, choice, other_choices=("random", "a file path"))
    return WeightsChoice(meta, WeightsInfo("torchvision", str(meta)), builder=meta)


BuilderKwargs = Callable[[str, WeightsChoice, wsrc.StateDict | None], dict[str, Any]]
"""(model key, weights choice, state dict to load or None) -> keyword arguments of torchvision's builder."""


def build_torchvision(key: str, choice: WeightsChoice, builder_kwargs: BuilderKwargs | None = None) -> torch.nn.Module:
    """Build torchvision model `key` in eval mode with the weights of `choice` loaded strictly."""
    # torchvision's builders would torch.load the file with weights_only=False; we read it
    # weights-only ourselves and pass the builder the arguments it sets for these weights.
    state = choice.state()
    kwargs = (builder_kwargs or _classifier_kwargs)(key, choice, state)
    with warnings.catch_warnings():
        # Some builders (googlenet, inception_v3) warn about init defaults when weights=None.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        model: torch.nn.Module = torchvision.models.get_model(key, weights=None, **kwargs)
    if state is not None:
        _load_strict(model, state, key)
    return model.eval()


def _classifier_kwargs(key: str, choice: WeightsChoice, state: wsrc.StateDict | None) -> dict[str, Any]:
    """The keyword arguments torchvision's builder sets when given these weights (see its source)."""
    weights = choice.builder
    if weights is None:
        return {}
    kwargs: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if key in ("googlenet", "inception_v3"):
        # Their pretrained weights expect the ImageNet re-normalisation inside the model
        # and carry the auxiliary heads (unused in eval mode).
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    if key.startswith("vit_"):
        kwargs["image_size"] = weights.meta["min_size"][0]
    if key == "maxvit_t":
        kwargs["input_size"] = weights.meta["min_size"]
    return kwargs


def _load_strict(model: torch.nn.Module, state: wsrc.StateDict, key: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise wsrc.WeightsIntegrityError(f"{key}: weights do not match the architecture: {exc}") from exc


def uint8_transform(transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The weights' `ImageClassification` preset as the same steps on transforms v2, else `transform`.

    The preset resizes through transforms v1, which interpolates uint8 images in float; v2 has
    a uint8 kernel: 0.4 ms instead of 3.6 ms for a 640x480 photo on one thread, and results
    within one intensity level (benchmarks/fastpath.py measures it).
    """
    if not isinstance(transform, ImageClassification) or transform.interpolation != InterpolationMode.BILINEAR:
        # v2's uint8 bicubic kernel clamps its overshoot differently (up to 6 levels apart).
        return transform
    resize, crop = list(transform.resize_size), list(transform.crop_size)
    interpolation, antialias = transform.interpolation, transform.antialias
    mean, std = list(transform.mean), list(transform.std)

    def fast(img: torch.Tensor) -> torch.Tensor:
        img = tvf.resize(img, resize, interpolation=interpolation, antialias=antialias)
        img = tvf.center_crop(img, crop)
        normalised: torch.Tensor = tvf.normalize(tvf.to_dtype(img, torch.float32, scale=True), mean=mean, std=std)
        return normalised

    return fast


def make_preprocess(transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Image.Image], torch.Tensor]:
    """Per-image preprocess: uint8 CHW tensor through the weights' own transform."""
    steps = uint8_transform(transform)

    def preprocess(img: Image.Image) -> torch.Tensor:
        return steps(tvf.pil_to_tensor(img))

    return preprocess


def _crop_start(length: int, crop: int) -> int:
    # torchvision's center_crop: round half to even, and zero padding first when the crop is larger.
    return round((length - crop) / 2.0) if crop <= length else -((crop - length) // 2)


def resize_crop_affine(size: tuple[int, int], resize_size: int, crop_size: int) -> Affine:
    """Input pixel -> original pixel for torchvision's resize (shorter side to `resize_size`) then center crop."""
    width, height = size
    # The resized size as torchvision computes it (transforms.functional._compute_resized_output_size).
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize_size, int(resize_size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    # Resizing maps pixel edges to pixel edges (align_corners=False), so each axis scales by old/new.
    sx, sy = width / new_w, height / new_h
    left, top = _crop_start(new_w, crop_size), _crop_start(new_h, crop_size)
    return (sx, 0.0, left * sx, 0.0, sy, top * sy)


def resize_crop_geometry(transform: Any) -> InputGeometry:
    """The input geometry of a torchvision weights' transform (its `resize_size` and `crop_size`)."""
    resize_size, crop_size = int(transform.resize_size[0]), int(transform.crop_size[0])

    def geometry(img: Image.Image) -> Affine:
        return resize_crop_affine(img.size, resize_size, crop_size)

    return geometry


def torchvision_classifier(key: str) -> Callable[[str, str | None, str | None], ModelSpec]:
    """Spec factory for the torchvision classifier `key`."""

    def factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
        choice = resolve_weights_choice(key, name, weights, sha256)
        categories = tuple(choice.meta.meta["categories"])
        transform = choice.meta.transforms()
        crop = transform.crop_size[0]
        return ModelSpec(
            name=name,
            task=Task.CLASSIFICATION,
            build=functools.partial(build_torchvision, key, choice),
            preprocess=make_preprocess(transform),
            postprocess=classification_postprocess(categories),
            tensor_outputs=classification_tensors,
            outputs=classification_outputs(len(categories)),
            categories=categories,
            input_size=(crop, crop),
            weights=choice.info,
            family="torchvision.classification",
            description=f"torchvision {key} ({choice.meta})",
            input_geometry=resize_crop_geometry(transform),
            decode_min_side=int(transform.resize_size[0]),
        )

    return factory


def _register_all() -> None:
    for key in torchvision.models.list_models(module=torchvision.models):
        register(
            key,
            Task.CLASSIFICATION,
            torchvision_classifier(key),
            family="torchvision.classification",
        )


_register_all()
