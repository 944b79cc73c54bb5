"""The registry and, catalogue-wide, every registered spec."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from contract.answers import ClassificationPrediction
from contract.params import PARAMS_BY_TASK, ClassificationParams
from models.registry import Item, ModelSpec, Task, UnknownModel, get_entry, get_spec, list_models, register

# Building and running the largest torchvision classifiers (vit_h_14, regnet_y_128gf: over
# 600M parameters) takes minutes and gigabytes on 2 CPU cores; above this size the
# catalogue test checks metadata and preprocessing but not a forward pass.
FORWARD_PARAM_LIMIT = 100_000_000


def _num_params(name: str) -> int:
    if get_entry(name).family != "torchvision.classification":
        return 0
    return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])


def _photo(size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_registry_lists_every_torchvision_model_and_the_bundled_models() -> None:
    names = set(list_models())
    for module in (
        torchvision.models,
        torchvision.models.detection,
        torchvision.models.segmentation,
        torchvision.models.video,
    ):
        assert set(torchvision.models.list_models(module=module)) <= names
    bundled = {
        "digits_cnn",
        "digits_detector",
        "digits_segmenter",
        "digits_dcgan",
        "digits_denoiser",
        "moving_digits_lstm",
    }
    assert bundled <= names
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(list_models(Task.CLASSIFICATION))
    assert {get_entry(n).task for n in names} == set(Task) - {Task.EXPLANATION}


BUNDLED = [n for n in list_models() if get_entry(n).family.startswith("bundled.")]


def _inputs(spec: ModelSpec, count: int = 2) -> list[torch.Tensor]:
    """Model inputs as the serving layer makes them, for any task."""
    if spec.task == Task.GENERATION:
        assert spec.sample is not None
        return spec.sample(count, 7, {})
    sizes = [(320, 240), (200, 300)][:count]
    if spec.task == Task.VIDEO_CLASSIFICATION:
        assert spec.preprocess_clip is not None
        return [spec.preprocess_clip([_photo(size).convert(spec.image_mode)] * 5) for size in sizes]
    return [spec.preprocess(_photo(size).convert(spec.image_mode)) for size in sizes]


@pytest.mark.parametrize("name", list_models())
def test_every_spec_has_metadata_and_preprocesses_to_its_input_shape(name: str) -> None:
    spec = get_spec(name, weights="random")
    assert isinstance(spec, ModelSpec)
    assert spec.name == name
    assert spec.weights.source == "random"
    assert spec.description
    assert spec.outputs
    if spec.task in (Task.CLASSIFICATION, Task.VIDEO_CLASSIFICATION):
        assert len(spec.categories) == spec.outputs[0].shape[-1]
    x = _inputs(spec, 1)[0]
    assert x.dtype == torch.float32
    if spec.family == "torchvision.detection":
        # Detectors take any image size (they resize inside); channels are fixed.
        assert x.shape[0] == spec.channels
    else:
        assert tuple(x.shape) == spec.input_shape


def _items(spec: ModelSpec) -> list[Item[Any]]:
    """Two items as a replica makes them: the task's parameters (top_k 3 and 1 for classifiers)
    and the originals' sizes; generated images have neither."""
    if spec.task == Task.GENERATION:
        return [Item(None), Item(None)]
    kind = PARAMS_BY_TASK[spec.task]
    params = [kind(top_k=3), kind(top_k=1)] if kind is ClassificationParams else [kind(), kind()]
    return [Item(params[0], (320, 240)), Item(params[1], (200, 300))]


@pytest.mark.parametrize(
    "name",
    # Every torchvision architecture is built: thirty seconds in all, so outside the fast tier.
    [
        pytest.param(n, marks=pytest.mark.slow)
        for n in list_models(Task.CLASSIFICATION)
        if _num_params(n) <= FORWARD_PARAM_LIMIT and n not in BUNDLED
    ]
    + BUNDLED,
)
def test_every_spec_returns_one_result_per_input(name: str) -> None:
    spec = get_spec(name, weights="random")
    module = spec.build()
    assert not module.training
    with torch.inference_mode():
        outputs = spec.forward(module, _inputs(spec))
    assert len(outputs) == 2
    results = spec.postprocess(outputs, _items(spec))
    assert len(results) == 2
    if spec.task in (Task.CLASSIFICATION, Task.VIDEO_CLASSIFICATION):
        assert [len(r.labels) for r in results if isinstance(r, ClassificationPrediction)] == [3, 1]
    tensors = spec.tensor_outputs(outputs)
    assert {o.name for o in spec.outputs} == set(tensors)
    for out in spec.outputs:
        got = tensors[out.name].shape
        assert got[0] == 2
        assert all(want in (-1, dim) for want, dim in zip(out.shape[1:], got[1:], strict=True)), (out, got)


def test_register_refuses_a_duplicate_name() -> None:
    entry = get_entry("digits_cnn")
    with pytest.raises(ValueError, match="already registered"):
        register("digits_cnn", Task.CLASSIFICATION, entry.factory, family="x")


def test_register_refuses_a_name_that_is_not_snake_case() -> None:
    entry = get_entry("digits_cnn")
    with pytest.raises(ValueError, match="lower snake case"):
        register("Digits-CNN", Task.CLASSIFICATION, entry.factory, family="x")


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModel, match="did you mean resnet18"):
        get_spec("resnet19")


def test_spec_can_be_served_under_another_name() -> None:
    spec = get_spec("resnet18", weights="random", name="fast_classifier")
    assert spec.name == "fast_classifier"
    assert spec.input_size == (224, 224)


def test_torchvision_preprocessing_is_the_one_of_the_weights() -> None:
    spec = get_spec("resnet18", weights="random")
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    img = _photo()
    preset = weights.transforms()
    expected = preset(torch.as_tensor(np.array(img)).permute(2, 0, 1))
    # The same steps on transforms v2's uint8 kernels: within one intensity level (test_preprocess.py).
    got = spec.preprocess(img)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1.01 / 255.0 / min(preset.std)
    assert spec.categories == tuple(weights.meta["categories"])
