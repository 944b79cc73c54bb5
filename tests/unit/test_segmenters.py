"""Segmenters: every torchvision segmenter by name, the mask answer, and the bundled digits_segmenter."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as tvf

import models.segmenters as seg
from contract.params import SegmentationParams
from models.images import decode_image
from models.metrics import mean_iou, segmentation_confusion
from models.registry import Item, ModelSpec, Task, get_entry, get_spec, list_models
from models.training.scenes import digit_scenes
from models.weights import BUNDLED_DIR, WeightsError, WeightsUnavailable, sha256_file
from tests.answers import answers
from tests.conftest import encode

TORCHVISION_SEGMENTERS = sorted(torchvision.models.list_models(module=torchvision.models.segmentation))
# A forward pass at 520x520 takes seconds to tens of seconds on 2 CPU cores for these.
HEAVY = {"deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101"}


def _photo(size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _decode_mask(result: dict[str, Any]) -> Image.Image:
    assert result["mask_format"] == "png;mode=L;value=class_index"
    img = Image.open(io.BytesIO(base64.b64decode(result["mask"])))
    assert img.format == "PNG"
    return img


def test_registry_lists_every_torchvision_segmenter_and_the_digits_segmenter() -> None:
    names = set(list_models(Task.SEGMENTATION))
    assert {*TORCHVISION_SEGMENTERS, "digits_segmenter"} <= names
    assert {get_entry(k).family for k in TORCHVISION_SEGMENTERS} == {"torchvision.segmentation"}
    assert get_entry("digits_segmenter").family == "bundled.digits"


@pytest.mark.parametrize(
    "name",
    [pytest.param(k, marks=pytest.mark.slow) if k in HEAVY else k for k in TORCHVISION_SEGMENTERS]
    + ["digits_segmenter"],
)
def test_every_segmenter_runs_one_forward_with_random_weights_offline(name: str, offline: Path) -> None:
    # Offline with an empty cache: random weights must fetch nothing, not even a backbone.
    spec = get_spec(name, weights="random")
    assert spec.task == Task.SEGMENTATION
    assert spec.weights.source == "random"
    assert spec.description
    assert spec.outputs[0].name == "mask"
    assert spec.outputs[0].datatype == "UINT8"
    assert spec.outputs[0].shape == (-1, *spec.input_size)
    module = spec.build()
    assert not module.training
    sizes = [(320, 240), (200, 300)]
    inputs = [spec.preprocess(_photo(size).convert(spec.image_mode)) for size in sizes]
    assert all(tuple(x.shape) == spec.input_shape and x.dtype == torch.float32 for x in inputs)
    with torch.inference_mode():
        outputs = spec.forward(module, inputs)
    assert len(outputs) == 2
    assert all(tuple(o.shape) == spec.input_size for o in outputs)
    results = answers(spec, outputs, sizes)
    for result, size in zip(results, sizes, strict=True):
        mask = _decode_mask(result)
        assert mask.size == size
        assert mask.mode == "L"
        assert int(np.asarray(mask).max()) < len(spec.categories)
        assert result["size"] == list(size)
        json.dumps(result)
    tensors = spec.tensor_outputs(outputs)
    assert set(tensors) == {"mask"}
    assert tensors["mask"].shape == (2, *spec.input_size)
    assert tensors["mask"].dtype == np.uint8


def test_default_weights_fail_offline_and_uncached_naming_the_weights(offline: Path) -> None:
    spec = get_spec("lraspp_mobilenet_v3_large")
    assert spec.weights.source == "torchvision"
    with pytest.raises(WeightsUnavailable, match=r"LRASPP_MobileNet_V3_Large_Weights\.COCO_WITH_VOC_LABELS_V1"):
        spec.build()


def test_unknown_weights_name_lists_the_choices() -> None:
    with pytest.raises(WeightsError, match=r"COCO_WITH_VOC_LABELS_V1.*random"):
        get_spec("fcn_resnet50", weights="IMAGENET1K_V1")


def test_weights_file_needs_a_sha256_pin(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="needs a sha256 pin"):
        get_spec("lraspp_mobilenet_v3_large", weights=str(tmp_path / "w.safetensors"))


def test_weights_file_with_an_auxiliary_head_loads_and_serves_like_its_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=True
    ).eval()
    path = tmp_path / "deeplab.safetensors"
    save_file(reference.state_dict(), str(path))
    spec = get_spec("deeplabv3_mobilenet_v3_large", weights=str(path), sha256=sha256_file(path))
    assert spec.weights.source == "file"
    module = spec.build()
    x = torch.randn(3, 96, 128)  # a small input keeps the two forward passes cheap on a CPU
    with torch.inference_mode():
        (class_map,) = spec.forward(module, [x])
        expected = reference(x.unsqueeze(0))["out"].argmax(dim=1)[0]
    assert torch.equal(class_map.long(), expected)


def test_preprocess_resizes_to_a_fixed_square_with_the_weights_normalisation() -> None:
    spec = get_spec("lraspp_mobilenet_v3_large", weights="random")
    preset = torchvision.models.segmentation.LRASPP_MobileNet_V3_Large_Weights.DEFAULT.transforms()
    img = _photo((640, 427))
    resized = tvf.resize(tvf.pil_to_tensor(img), [520, 520], antialias=True)
    expected = tvf.normalize(tvf.to_dtype(resized, torch.float32, scale=True), preset.mean, preset.std)
    assert spec.input_size == (520, 520)
    assert torch.allclose(spec.preprocess(img), expected)
    assert spec.categories == tuple(
        torchvision.models.get_model_weights("lraspp_mobilenet_v3_large").DEFAULT.meta["categories"]
    )


def _toy_map() -> torch.Tensor:
    class_map = torch.zeros(128, 128, dtype=torch.uint8)
    class_map[:64, :32] = 3  # 1/8 of the picture
    class_map[120:, 124:] = 10  # 32 pixels: 1/512
    return class_map


def _toy_answer(size: tuple[int, int] | None, **params: Any) -> dict[str, Any]:
    """The digits segmentation postprocess of the toy map, as the server sends it."""
    postprocess = seg.segmentation_postprocess(seg.DIGITS_CATEGORIES)
    (result,) = postprocess([_toy_map()], [Item(SegmentationParams(**params), size)])
    return result.model_dump(mode="json")


def test_mask_png_decodes_to_the_original_size_with_class_indices_and_fractions_summing_to_one() -> None:
    result = _toy_answer((256, 200))
    mask = np.asarray(_decode_mask(result))
    assert mask.shape == (200, 256)
    assert set(np.unique(mask).tolist()) == {0, 3, 10}
    classes = result["classes"]
    assert [c["index"] for c in classes] == [0, 3, 10]
    assert [c["label"] for c in classes] == ["background", "2", "9"]
    assert sum(c["fraction"] for c in classes) == pytest.approx(1.0)
    for c in classes:
        assert c["fraction"] == pytest.approx(float(np.mean(mask == c["index"])))
    assert classes[1]["fraction"] == pytest.approx(1 / 8, abs=0.01)


def test_min_fraction_leaves_small_classes_out_of_the_list_but_not_the_mask() -> None:
    result = _toy_answer((128, 128), min_fraction=0.01)
    assert [c["index"] for c in result["classes"]] == [0, 3]
    assert 10 in np.unique(np.asarray(_decode_mask(result)))


def test_mask_is_at_input_size_when_no_original_size_is_given() -> None:
    result = _toy_answer(None)
    assert _decode_mask(result).size == (128, 128)
    assert result["size"] == [128, 128]


@pytest.mark.parametrize(
    "params",
    [
        {"min_fraction": 1.5},
        {"min_fraction": -0.1},
        {"min_fraction": "some"},
        {"min_fraction": True},
    ],
)
def test_invalid_parameters_are_refused_before_any_segmenter_sees_them(params: dict[str, Any]) -> None:
    # The API validates them with the task's model, once; segmenters receive only valid ones.
    with pytest.raises(ValueError, match="min_fraction"):
        SegmentationParams.model_validate(params)


@pytest.fixture(scope="module")
def digits_served() -> tuple[ModelSpec, torch.nn.Module]:
    spec = get_spec("digits_segmenter")
    return spec, spec.build()


def _segment(served: tuple[ModelSpec, torch.nn.Module], pngs: list[bytes]) -> list[np.ndarray]:
    """What the server does: decode, preprocess, one batch forward, postprocess; the masks decoded."""
    spec, module = served
    images = [decode_image(png, spec.image_mode) for png in pngs]
    with torch.inference_mode():
        outputs = spec.forward(module, [spec.preprocess(img) for img in images])
    return [np.asarray(_decode_mask(r)) for r in answers(spec, outputs, [img.size for img in images])]


# 300 scenes through the model: eight seconds, so outside the fast tier (the bar is also in
# test_evaluate's folder run of fewer scenes).
@pytest.mark.slow
def test_digits_segmenter_held_out_mean_iou_is_at_least_0_8(digits_served: tuple[ModelSpec, torch.nn.Module]) -> None:
    scenes = digit_scenes("test", 300)
    num_classes = len(seg.DIGITS_CATEGORIES)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i in range(0, len(scenes), 50):
        chunk = scenes[i : i + 50]
        for scene, mask in zip(chunk, _segment(digits_served, [encode(s.image) for s in chunk]), strict=True):
            confusion += segmentation_confusion(scene.mask, mask, num_classes)
    miou, _ = mean_iou(confusion)
    assert miou >= 0.8
    report = json.loads((BUNDLED_DIR / "digits_segmenter.json").read_text())
    assert miou == pytest.approx(report["held_out_mean_iou"], abs=0.01)


def test_digits_segmenter_reads_light_ink_on_dark_paper_and_answers_at_original_size(
    digits_served: tuple[ModelSpec, torch.nn.Module],
) -> None:
    scenes = digit_scenes("test", 5)
    pngs = [encode(s.image) for s in scenes]
    inverted = [encode(Image.eval(s.image, lambda v: 255 - v).convert("RGB")) for s in scenes]
    enlarged = [encode(s.image.resize((256, 192), Image.Resampling.BILINEAR)) for s in scenes]
    plain, dark, big = (_segment(digits_served, batch) for batch in (pngs, inverted, enlarged))
    for a, b, c in zip(plain, dark, big, strict=True):
        # 1 - (1 - v) is v up to float rounding, which may flip a pixel on a decision boundary.
        assert np.mean(a == b) >= 0.999
        assert c.shape == (192, 256)


def test_digits_segmenter_refuses_unknown_weights() -> None:
    with pytest.raises(WeightsError, match="bundled"):
        get_spec("digits_segmenter", weights="DEFAULT")


def test_digits_segmenter_weights_pin_file_and_training_report_agree() -> None:
    report = json.loads((BUNDLED_DIR / "digits_segmenter.json").read_text())
    actual = sha256_file(BUNDLED_DIR / seg.DIGITS_WEIGHTS_FILE)
    assert actual == seg.DIGITS_WEIGHTS_SHA256 == report["sha256"]
    assert report["held_out_mean_iou"] >= 0.8
    assert (BUNDLED_DIR / seg.DIGITS_WEIGHTS_FILE).stat().st_size < 5_000_000
