"""Inference backends (models/backends.py): each agrees with eager PyTorch, and bad choices are refused."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from deployments.args import AppArgs, ModelArgs
from models.backends import BACKENDS, OnnxRuntimeModule, apply_backend, parity
from models.registry import ModelSpec, get_spec

# resnet18 with random weights but a fixed seed: the same compute as pretrained, offline.
# (mobilenet_v3_small is cheaper, but its random logits are ~1e-9 apart: argmax is noise.)
RANDOM_MODEL = "resnet18"
SEED = 0


def _digits(spec: ModelSpec) -> list[torch.Tensor]:
    """150 held-out digits (never trained on), as the server would preprocess them."""
    from models.training.data import digits_split, render_digit

    _, _, x_test, _ = digits_split()
    return [spec.preprocess(render_digit(image8)) for image8 in x_test[:150]]


def _photos(spec: ModelSpec) -> list[torch.Tensor]:
    """32 fixed crops (some mirrored) of scikit-learn's two sample photos, preprocessed."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(SEED)
    inputs = []
    for name in ("china.jpg", "flower.jpg"):
        photo = Image.fromarray(load_sample_image(name))
        for index in range(16):
            side = int(rng.integers(160, min(photo.size)))
            left, top = int(rng.integers(0, photo.width - side)), int(rng.integers(0, photo.height - side))
            crop = photo.crop((left, top, left + side, top + side))
            inputs.append(spec.preprocess(ImageOps.mirror(crop) if index % 2 else crop))
    return inputs


CASES: dict[str, tuple[str | None, Callable[[ModelSpec], list[torch.Tensor]]]] = {
    "digits_cnn": (None, _digits),  # bundled trained weights
    RANDOM_MODEL: ("random", _photos),
}


def _build(spec: ModelSpec) -> nn.Module:
    """The spec's module; random weights are the same on every call."""
    torch.manual_seed(SEED)
    return spec.build().eval()


@pytest.fixture(
    scope="module",
    # resnet18's cases take seconds each (ONNX export, int8 calibration): `make test` only.
    params=[pytest.param(c, marks=pytest.mark.slow) if c == RANDOM_MODEL else c for c in sorted(CASES)],
)
def case(request: pytest.FixtureRequest) -> tuple[ModelSpec, nn.Module, list[torch.Tensor]]:
    """A model's spec, its eager module and its fixed inputs."""
    weights, make_inputs = CASES[request.param]
    spec = get_spec(request.param, weights)
    return spec, _build(spec), make_inputs(spec)


# ONNX export takes seconds even for digits_cnn: `make test` only.
@pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=pytest.mark.slow) if b == "onnx" else b for b in BACKENDS if b != "eager"]
)
def test_top1_agrees_with_eager_when_backend_is_applied(
    case: tuple[ModelSpec, nn.Module, list[torch.Tensor]], backend: str
) -> None:
    spec, eager, inputs = case
    result = parity(eager, apply_backend(_build(spec), spec, backend), spec, inputs)
    assert result.shapes_equal
    assert result.images == len(inputs)
    assert result.top1_agreement >= 0.99, result
    if backend != "int8":
        # Float backends compute the same function: even random weights' input-dependent
        # logits (whose plain top-1 is one class for every photo) must agree.
        assert result.centered_top1_agreement >= 0.99, result
        assert result.max_abs_logit_diff < 1e-3, result


def test_eager_backend_returns_the_module_unchanged() -> None:
    spec = get_spec("digits_cnn")
    module = spec.build()
    assert apply_backend(module, spec, "eager") is module


@pytest.mark.slow
def test_onnx_runs_on_the_cpu_provider_when_module_is_on_cpu() -> None:
    spec = get_spec("digits_cnn")
    module = apply_backend(spec.build(), spec, "onnx")
    assert isinstance(module, OnnxRuntimeModule)
    assert module.providers == ["CPUExecutionProvider"]
    assert module(torch.zeros(3, *spec.input_shape)).shape == (3, len(spec.categories))


def test_int8_leaves_convolutions_in_float_when_quantizing() -> None:
    spec = get_spec("digits_cnn")
    quantized = apply_backend(spec.build(), spec, "int8")
    kinds = {type(m).__module__ for m in quantized.modules()}
    assert any(kind.startswith("torch.ao.nn.quantized.dynamic") for kind in kinds)
    assert all(type(m) is nn.Conv2d for m in quantized.modules() if "Conv" in type(m).__name__)


def test_unknown_backend_is_a_value_error_naming_it() -> None:
    spec = get_spec("digits_cnn")
    with pytest.raises(ValueError, match=r"digits_cnn.*unknown backend 'tensorrt'"):
        apply_backend(nn.Identity(), spec, "tensorrt")


@pytest.mark.parametrize("backend", ["channels_last", "onnx", "int8"])
def test_non_classifier_is_a_value_error_naming_model_and_backend_when_backend_is_not_eager(backend: str) -> None:
    spec = get_spec("digits_detector")
    with pytest.raises(ValueError, match=rf"digits_detector.*detection.*{backend}.*classification models only"):
        apply_backend(nn.Identity(), spec, backend)


def test_backend_is_validated_when_args_are_parsed() -> None:
    assert ModelArgs(name="digits_cnn").backend == "eager"
    assert ModelArgs(name="digits_cnn", backend="onnx").backend == "onnx"
    with pytest.raises(pydantic.ValidationError, match="backend"):
        ModelArgs(name="digits_cnn", backend="tensorrt")


def test_non_classifier_with_backend_is_refused_when_app_args_are_parsed() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"digits_detector.*'int8' runs classifiers only"):
        AppArgs.model_validate({"models": [{"name": "digits_detector", "backend": "int8"}]})
