"""Every torchvision classification model by name, with the preprocessing of its weights."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models import WeightsEnum
from torchvision.transforms.v2 import functional as tvf

from models import weights as wsrc
from models.registry import ModelSpec, Task, TensorSpec, WeightsInfo, register

DEFAULT_TOP_K = 5
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth")


def classification_postprocess(categories: Sequence[str]) -> Callable[..., list[dict[str, Any]]]:
    """Batch postprocess: softmax, then each item's own top_k labels sorted by score."""

    def postprocess(outputs: Sequence[torch.Tensor], params: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        probs = torch.softmax(torch.stack(list(outputs)).float(), dim=1)
        ks = [min(int(p.get("top_k", DEFAULT_TOP_K)), probs.shape[1]) for p in params]
        scores, indices = probs.topk(max(ks), dim=1)
        return [
            {
                "labels": [
                    {"label": categories[i], "index": i, "score": s}
                    for s, i in zip(scores[row, :k].tolist(), indices[row, :k].tolist(), strict=True)
                ]
            }
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


def _build_architecture(key: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        # Some builders (googlenet, inception_v3) warn about init defaults when weights=None.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        model: torch.nn.Module = torchvision.models.get_model(key, weights=None)
        return model


def _build(key: str, load: Callable[[], wsrc.StateDict] | None, builder_weights: WeightsEnum | None) -> torch.nn.Module:
    if builder_weights is not None:
        # torchvision's builders would torch.load the file with weights_only=False; we read it
        # weights-only ourselves and pass the builder the arguments it sets for these weights.
        state = wsrc.fetch_torchvision(builder_weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            model: torch.nn.Module = torchvision.models.get_model(
                key, weights=None, **_builder_kwargs(key, builder_weights)
            )
        _load_strict(model, state, key)
    else:
        model = _build_architecture(key)
        if load is not None:
            _load_strict(model, load(), key)
    return model.eval()


def _builder_kwargs(key: str, weights: WeightsEnum) -> dict[str, Any]:
    """The keyword arguments torchvision's builder sets when given `weights` (see its source)."""
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


def make_preprocess(transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Image.Image], torch.Tensor]:
    """Per-image preprocess: uint8 CHW tensor through the weights' own transform."""

    def preprocess(img: Image.Image) -> torch.Tensor:
        return transform(tvf.pil_to_tensor(img))

    return preprocess


def torchvision_classifier(key: str) -> Callable[[str, str | None, str | None], ModelSpec]:
    """Spec factory for the torchvision classifier `key`."""

    def factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
        choice = weights or "DEFAULT"
        load: Callable[[], wsrc.StateDict] | None = None
        builder_weights: WeightsEnum | None = None
        if choice == "random":
            meta_weights = _weights_enum(key).DEFAULT
            info = WeightsInfo("random", "random")
        elif choice.endswith(_FILE_SUFFIXES) or "/" in choice:
            if not sha256:
                raise wsrc.WeightsError(f"{name}: weights file {Path(choice).name} needs a sha256 pin")
            meta_weights = _weights_enum(key).DEFAULT
            path = Path(choice)
            info = WeightsInfo("file", path.name, sha256.lower())
            load = functools.partial(wsrc.load_state_dict_file, path, sha256)
        else:
            meta_weights = builder_weights = resolve_torchvision_weights(
                key, choice, other_choices=("random", "a file path")
            )
            info = WeightsInfo("torchvision", str(meta_weights))
        categories = tuple(meta_weights.meta["categories"])
        transform = meta_weights.transforms()
        crop = transform.crop_size[0]
        return ModelSpec(
            name=name,
            task=Task.CLASSIFICATION,
            build=functools.partial(_build, key, load, builder_weights),
            preprocess=make_preprocess(transform),
            postprocess=classification_postprocess(categories),
            tensor_outputs=classification_tensors,
            outputs=classification_outputs(len(categories)),
            categories=categories,
            input_size=(crop, crop),
            weights=info,
            family="torchvision.classification",
            description=f"torchvision {key} ({meta_weights})",
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
