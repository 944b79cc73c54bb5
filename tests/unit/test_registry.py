"""The registry and, catalogue-wide, every registered spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from models.registry import ModelSpec, Task, UnknownModel, get_entry, get_spec, list_models, register

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


def test_registry_lists_every_torchvision_classifier_and_the_bundled_models() -> None:
    names = set(list_models())
    assert set(torchvision.models.list_models(module=torchvision.models)) <= names
    assert "digits_cnn" in names
    assert list_models(Task.CLASSIFICATION) == sorted(names)


@pytest.mark.parametrize("name", list_models())
def test_every_spec_has_metadata_and_preprocesses_to_its_input_shape(name: str) -> None:
    spec = get_spec(name, weights="random")
    assert isinstance(spec, ModelSpec)
    assert spec.name == name
    assert spec.categories
    assert len(spec.categories) == spec.outputs[0].shape[-1]
    assert spec.weights.source == "random"
    assert spec.description
    x = spec.preprocess(_photo().convert(spec.image_mode))
    assert tuple(x.shape) == spec.input_shape
    assert x.dtype == torch.float32


@pytest.mark.parametrize("name", [n for n in list_models() if _num_params(n) <= FORWARD_PARAM_LIMIT])
def test_every_spec_returns_one_result_per_input(name: str) -> None:
    spec = get_spec(name, weights="random")
    module = spec.build()
    assert not module.training
    images = [_photo((320, 240)).convert(spec.image_mode), _photo((200, 300)).convert(spec.image_mode)]
    with torch.inference_mode():
        outputs = spec.forward(module, [spec.preprocess(img) for img in images])
    assert len(outputs) == 2
    results = spec.postprocess(outputs, [{"top_k": 3}, {"top_k": 1}])
    assert [len(r["labels"]) for r in results] == [3, 1]
    tensors = spec.tensor_outputs(outputs)
    assert {o.name for o in spec.outputs} == set(tensors)
    for out in spec.outputs:
        assert tensors[out.name].shape == (2, *out.shape[1:])


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
    expected = weights.transforms()(torch.as_tensor(np.array(img)).permute(2, 0, 1))
    assert torch.equal(spec.preprocess(img), expected)
    assert spec.categories == tuple(weights.meta["categories"])
