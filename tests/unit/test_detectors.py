"""Detectors: every torchvision detector by name, their weights, postprocess, and the bundled digits_detector."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from contract.answers import DetectionPrediction
from contract.params import DetectionParams
from models import detectors
from models import weights as wsrc
from models.metrics import Detections, detection_map
from models.registry import ModelSpec, Task, get_entry, get_spec, list_models
from models.training.scenes import Scene, digit_scenes, encode_picture, picture
from models.training.train_digits_detector import as_detections
from models.weights import BUNDLED_DIR, sha256_file
from tests.answers import answers

TORCHVISION_DETECTORS = torchvision.models.list_models(module=torchvision.models.detection)
# Small enough to build and run on every test run; the ResNet-50 and VGG ones take seconds each.
FAST = ("ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn")
CATALOGUE = [key if key in FAST else pytest.param(key, marks=pytest.mark.slow) for key in TORCHVISION_DETECTORS]
ALL_PARAMS = {"score_threshold": 0.0, "max_detections": 1000}


def _photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth random colour blobs: an image with edges and regions, not pure noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _output(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def _check_result(result: dict[str, Any], spec: ModelSpec, size: tuple[int, int], limit: int) -> None:
    found = result["detections"]
    assert len(found) <= limit
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
    for d in found:
        assert set(d) == {"label", "index", "score", "box"}
        assert d["label"] == spec.categories[d["index"]]
        assert d["label"] not in detectors.PLACEHOLDER_CATEGORIES
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= size[0]
        assert 0 <= y1 <= y2 <= size[1]
        assert all(round(v, 2) == v for v in d["box"])
    json.dumps(result)


# -- Catalogue --------------------------------------------------------------------------------------


def test_registry_lists_every_torchvision_detector_and_the_digits_detector() -> None:
    names = set(list_models(Task.DETECTION))
    assert set(TORCHVISION_DETECTORS) <= names
    assert "digits_detector" in names
    assert {get_entry(key).family for key in TORCHVISION_DETECTORS} == {"torchvision.detection"}
    assert get_entry("digits_detector").family == "bundled.digits"


@pytest.mark.parametrize("key", CATALOGUE)
def test_every_torchvision_detector_runs_with_random_weights_on_images_of_any_size(key: str) -> None:
    spec = get_spec(key, weights="random")
    default = torchvision.models.get_model_weights(key).DEFAULT
    assert spec.task == Task.DETECTION
    assert spec.weights.label == "random"
    assert spec.categories == tuple(default.meta["categories"])
    assert [o.name for o in spec.outputs] == ["boxes", "scores", "labels", "num_detections"]
    module = spec.build()
    assert not module.training
    sizes = [(160, 120), (90, 140)]
    inputs = [spec.preprocess(_photo(size, seed)) for seed, size in enumerate(sizes)]
    assert [tuple(x.shape) for x in inputs] == [(3, h, w) for w, h in sizes]
    with torch.inference_mode():
        outputs = spec.forward(module, inputs)
    assert len(outputs) == 2
    for out in outputs:
        assert out["boxes"].shape == (len(out["scores"]), 4)
        assert out["labels"].shape == out["scores"].shape
    for result, size in zip(answers(spec, outputs, sizes, **{**ALL_PARAMS, "max_detections": 5}), sizes, strict=True):
        _check_result(result, spec, size, 5)
    tensors = spec.tensor_outputs(outputs)
    counts = [len(out["scores"]) for out in outputs]
    assert tensors["num_detections"].tolist() == counts
    assert tensors["boxes"].shape == (2, max(counts), 4)


@pytest.mark.parametrize(
    ("key", "size"),
    [
        ("ssdlite320_mobilenet_v3_large", (320, 320)),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", (320, 320)),
        ("ssd300_vgg16", (300, 300)),
        ("fasterrcnn_resnet50_fpn", (800, 800)),
        ("retinanet_resnet50_fpn_v2", (800, 800)),
        ("keypointrcnn_resnet50_fpn", (800, 800)),
    ],
)
def test_input_size_is_the_size_the_detector_resizes_to(key: str, size: tuple[int, int]) -> None:
    assert get_spec(key, weights="random").input_size == size


def test_spec_categories_follow_the_named_weights() -> None:
    spec = get_spec("keypointrcnn_resnet50_fpn", weights="COCO_LEGACY")
    assert spec.weights.label == "torchvision:KeypointRCNN_ResNet50_FPN_Weights.COCO_LEGACY"
    assert spec.categories == ("no person", "person")


# -- Weights ----------------------------------------------------------------------------------------


def test_default_weights_fail_naming_them_when_offline_and_uncached(offline: Path) -> None:
    spec = get_spec("ssdlite320_mobilenet_v3_large")
    assert spec.weights.label == "torchvision:SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"
    with pytest.raises(wsrc.WeightsUnavailable, match=r"SSDLite320_MobileNet_V3_Large_Weights\.COCO_V1.*random"):
        spec.build()


def test_unknown_weights_name_is_refused_with_the_choices() -> None:
    with pytest.raises(wsrc.WeightsError, match="COCO_V1"):
        get_spec("fcos_resnet50_fpn", weights="COCO_V9")


def test_weights_file_without_a_pin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(wsrc.WeightsError, match="sha256 pin"):
        get_spec("ssdlite320_mobilenet_v3_large", weights=str(tmp_path / "ssd.safetensors"))


def _torchvision_reference(key: str, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    """What torchvision's own builder makes for the DEFAULT weights, with its random init kept."""
    with monkeypatch.context() as patch:
        # The builder would download and unpickle the weights; here it loads nothing.
        patch.setattr(WeightsEnum, "get_state_dict", lambda self, *args, **kwargs: {})
        patch.setattr(nn.Module, "load_state_dict", lambda self, *args, **kwargs: None)
        model: nn.Module = torchvision.models.get_model(key, weights="DEFAULT")
    return model.eval()


@pytest.mark.parametrize(
    "key",
    [
        "fasterrcnn_mobilenet_v3_large_320_fpn",  # frozen batch norms in the backbone
        "ssdlite320_mobilenet_v3_large",  # trainable batch norms
        pytest.param("fasterrcnn_resnet50_fpn", marks=pytest.mark.slow),  # frozen, eps 0
        pytest.param("retinanet_resnet50_fpn_v2", marks=pytest.mark.slow),
        pytest.param("keypointrcnn_resnet50_fpn", marks=pytest.mark.slow),
    ],
)
def test_cached_weights_build_what_torchvisions_builder_builds(
    key: str, offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _torchvision_reference(key, monkeypatch)
    weights = torchvision.models.get_model_weights(key).DEFAULT
    path = wsrc.torchvision_cache_path(weights)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = get_spec(key).build()
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
    eps = [m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d | nn.BatchNorm2d)]
    assert eps == [m.eps for m in reference.modules() if isinstance(m, FrozenBatchNorm2d | nn.BatchNorm2d)]
    state, expected = model.state_dict(), reference.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    x = torch.rand(1, 3, 96, 128)
    with torch.inference_mode():
        features = model.get_submodule("backbone")(x)
        reference_features = reference.get_submodule("backbone")(x)
    for mine, theirs in zip(dict(features).values(), dict(reference_features).values(), strict=True):
        torch.testing.assert_close(mine, theirs)


# -- Preprocess, postprocess and v2 tensors ---------------------------------------------------------


def test_preprocess_keeps_the_size_and_downscales_only_beyond_the_cap() -> None:
    spec = get_spec("ssdlite320_mobilenet_v3_large", weights="random")
    small = spec.preprocess(_photo((200, 100)))
    assert small.shape == (3, 100, 200)
    assert small.dtype == torch.float32
    assert 0.0 <= float(small.min()) <= float(small.max()) <= 1.0
    assert spec.preprocess(_photo((2666, 1000))).shape == (3, 500, detectors.MAX_SIDE)
    assert spec.preprocess(_photo((64, 48)).convert("L")).shape == (3, 48, 64)


def test_postprocess_applies_score_threshold_and_max_detections() -> None:
    spec = get_spec("ssdlite320_mobilenet_v3_large", weights="random")
    out = _output([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4], [7, 7, 9, 9]], [1, 3, 18, 1], [0.9, 0.3, 0.7, 0.6])

    def scores(**params: Any) -> list[float]:
        result = answers(spec, [out], [None], **params)[0]
        return [round(d["score"], 3) for d in result["detections"]]

    assert scores() == [0.9, 0.7, 0.6]  # default threshold 0.5
    assert scores(score_threshold=0.0) == [0.9, 0.7, 0.6, 0.3]
    assert scores(score_threshold=0.65) == [0.9, 0.7]
    assert scores(score_threshold=0, max_detections=2) == [0.9, 0.7]
    first = answers(spec, [out], [None])[0]["detections"][0]
    assert first == {"label": "person", "index": 1, "score": pytest.approx(0.9), "box": [0.0, 0.0, 10.0, 10.0]}


def test_postprocess_never_reports_placeholder_categories() -> None:
    spec = get_spec("fasterrcnn_mobilenet_v3_large_320_fpn", weights="random")
    na = spec.categories.index("N/A")
    out = _output([[0, 0, 5, 5]] * 3, [0, na, 2], [0.99, 0.98, 0.6])
    result = answers(spec, [out], [None])[0]
    assert [d["label"] for d in result["detections"]] == ["bicycle"]


def test_postprocess_maps_boxes_to_original_pixels_and_clips_them() -> None:
    spec = get_spec("ssdlite320_mobilenet_v3_large", weights="random")
    out = _output([[10.25, 20.5, 100.0, 50.0], [-3.0, 480.0, 1400.0, 520.0]], [1, 2], [0.9, 0.8])
    # A 2666x1000 original was downscaled to 1333x500 by preprocess: boxes scale back by 2.
    big = answers(spec, [out], [(2666, 1000)])[0]["detections"]
    assert big[0]["box"] == [20.5, 41.0, 200.0, 100.0]
    assert big[1]["box"] == [0.0, 960.0, 2666.0, 1000.0]
    # Within the cap the model saw the original's pixels; boxes are only clipped.
    small = answers(spec, [out], [(640, 500)])[0]["detections"]
    assert small[0]["box"] == [10.25, 20.5, 100.0, 50.0]
    assert small[1]["box"] == [0.0, 480.0, 640.0, 500.0]


@pytest.mark.parametrize(
    "params",
    [
        {"score_threshold": -0.1},
        {"score_threshold": 1.5},
        {"score_threshold": "half"},
        {"score_threshold": True},
        {"score_threshold": math.nan},
        {"max_detections": 0},
        {"max_detections": 1001},
        {"max_detections": 2.5},
        {"max_detections": "ten"},
        {"max_detections": True},
    ],
)
def test_invalid_parameters_are_refused_before_any_detector_sees_them(params: dict[str, Any]) -> None:
    # The API validates them with the task's model, once; detectors receive only valid ones.
    with pytest.raises(ValueError, match=next(iter(params))):
        DetectionParams.model_validate(params)


def test_tensor_outputs_pad_every_item_to_the_largest_count() -> None:
    spec = get_spec("digits_detector", weights="random")
    outputs = [_output([[0, 0, 5, 5], [1, 1, 2, 2], [3, 3, 9, 9]], [1, 2, 3], [0.9, 0.8, 0.1]), _output([], [], [])]
    tensors = spec.tensor_outputs(outputs)
    assert {o.name: (o.datatype, len(o.shape)) for o in spec.outputs} == {
        "boxes": ("FP32", 3),
        "scores": ("FP32", 2),
        "labels": ("INT64", 2),
        "num_detections": ("INT32", 1),
    }
    assert tensors["boxes"].shape == (2, 3, 4)
    assert tensors["boxes"].dtype == np.float32
    assert tensors["scores"].dtype == np.float32
    assert tensors["labels"].dtype == np.int64
    assert tensors["num_detections"].dtype == np.int32
    assert tensors["num_detections"].tolist() == [3, 0]
    assert tensors["labels"].tolist() == [[1, 2, 3], [-1, -1, -1]]
    assert tensors["scores"][1].tolist() == [0.0, 0.0, 0.0]
    assert not tensors["boxes"][1].any()
    empty = spec.tensor_outputs([_output([], [], [])])
    assert empty["boxes"].shape == (1, 0, 4)
    assert empty["num_detections"].tolist() == [0]


# -- digits_detector --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> tuple[ModelSpec, nn.Module]:
    spec = get_spec("digits_detector")
    return spec, spec.build()


@pytest.fixture(scope="module")
def held_out_scenes() -> list[Scene]:
    """Scenes of held-out digits only: the detector never trained on any of them."""
    return digit_scenes("test", 300)


def _detect(served: tuple[ModelSpec, nn.Module], images: list[Image.Image], **params: Any) -> list[dict[str, Any]]:
    """The server's path: preprocess each image, one batched forward, postprocess with image_size."""
    spec, module = served
    with torch.inference_mode():
        outputs = spec.forward(module, [spec.preprocess(img.convert(spec.image_mode)) for img in images])
    return answers(spec, outputs, [img.size for img in images], **params)


def _map50(results: list[dict[str, Any]], truths: list[Detections]) -> tuple[float, dict[int, float]]:
    found = [as_detections(DetectionPrediction.model_validate(r)) for r in results]
    return detection_map(found, truths, num_classes=10, iou_threshold=0.5)


def test_digits_detector_held_out_map50_is_at_least_0_9(
    served: tuple[ModelSpec, nn.Module], held_out_scenes: list[Scene]
) -> None:
    results = _detect(served, [s.image for s in held_out_scenes], score_threshold=0.0)
    mean_ap, per_class = _map50(results, [Detections(s.boxes, s.labels) for s in held_out_scenes])
    assert mean_ap >= 0.9
    assert len(per_class) == 10
    report = json.loads((BUNDLED_DIR / "digits_detector.json").read_text())
    assert mean_ap == pytest.approx(report["held_out_map50"], abs=0.01)


def test_digits_detector_boxes_scale_with_an_upscaled_scene(
    served: tuple[ModelSpec, nn.Module], held_out_scenes: list[Scene]
) -> None:
    scenes = held_out_scenes[:60]
    big = [s.image.resize((384, 384), Image.Resampling.BICUBIC) for s in scenes]
    mean_ap, _ = _map50(_detect(served, big, score_threshold=0.0), [Detections(s.boxes * 3, s.labels) for s in scenes])
    assert mean_ap >= 0.85
    # The same detections, three times larger, within a pixel or two of the 128 px picture's.
    small = sorted(_detect(served, [scenes[0].image])[0]["detections"], key=lambda d: d["box"])
    large = sorted(_detect(served, [big[0]])[0]["detections"], key=lambda d: d["box"])
    assert [d["label"] for d in large] == [d["label"] for d in small]
    assert len(small) == len(scenes[0].labels)
    np.testing.assert_allclose([d["box"] for d in large], np.array([d["box"] for d in small]) * 3, atol=6)


def test_digits_detector_finds_light_digits_on_a_dark_board_and_on_a_wider_sheet(
    served: tuple[ModelSpec, nn.Module], held_out_scenes: list[Scene]
) -> None:
    scenes = held_out_scenes[:60]
    truths = [Detections(s.boxes, s.labels) for s in scenes]
    inverted = [Image.eval(s.image, lambda v: 255 - v).convert("RGB") for s in scenes]
    assert _map50(_detect(served, inverted, score_threshold=0.0), truths)[0] >= 0.85
    sheets, shifted = [], []
    for s in scenes:
        sheet = Image.new("L", (192, 140), int(np.median(np.asarray(s.image))))
        sheet.paste(s.image, (50, 6))
        sheets.append(sheet)
        shifted.append(Detections(s.boxes + np.array([50, 6, 50, 6], dtype=np.float32), s.labels))
    assert _map50(_detect(served, sheets, score_threshold=0.0), shifted)[0] >= 0.85


def test_digits_detector_finds_nothing_on_blank_paper(served: tuple[ModelSpec, nn.Module]) -> None:
    results = _detect(served, [Image.new("L", (128, 128), 230), Image.new("RGB", (50, 300), (20, 20, 20))])
    assert [r["detections"] for r in results] == [[], []]


def test_digits_detector_preprocess_fits_any_picture_into_its_canvas() -> None:
    spec = get_spec("digits_detector", weights="random")
    assert spec.input_shape == (1, 128, 128)
    x = spec.preprocess(_photo((300, 150)).convert("L"))
    assert x.shape == (1, 128, 128)
    assert not x[:, 64:].any()  # below the fitted 128x64 picture: padding
    assert spec.input_geometry is not None
    assert spec.input_geometry(Image.new("L", (300, 150))) == pytest.approx((300 / 128, 0, 0, 0, 150 / 64, 0))


def test_digits_detector_weights_choices() -> None:
    assert get_spec("digits_detector").weights.label == f"bundled:{detectors.DIGITS_WEIGHTS_FILE}"
    assert get_spec("digits_detector", weights="random").build().training is False
    with pytest.raises(wsrc.WeightsError, match="bundled"):
        get_spec("digits_detector", weights="COCO_V1")


def test_digits_detector_pin_file_and_training_report_agree() -> None:
    report = json.loads((BUNDLED_DIR / "digits_detector.json").read_text())
    path = BUNDLED_DIR / detectors.DIGITS_WEIGHTS_FILE
    assert sha256_file(path) == detectors.DIGITS_WEIGHTS_SHA256 == report["sha256"]
    assert path.stat().st_size < 5_000_000
    assert report["held_out_map50"] >= 0.9
    assert set(report["held_out_ap50_per_class"]) == set(detectors.DIGIT_CATEGORIES)
    assert report["train_seconds"] > 0


def test_digits_detector_scores_are_calibrated_so_the_default_threshold_keeps_what_is_likely_right(
    served: tuple[ModelSpec, nn.Module], held_out_scenes: list[Scene]
) -> None:
    # The bundled weights carry the Platt scaling fitted on validation scenes (the report says which).
    module = served[1]
    report = json.loads((BUNDLED_DIR / "digits_detector.json").read_text())
    calibration = module.get_buffer("centre_calibration").tolist()
    assert calibration == pytest.approx(
        [report["centre_calibration"]["scale"], report["centre_calibration"]["shift"]], abs=1e-4
    )
    # Held-out detections above the default threshold are right about as often as they claim:
    # the mean score of the kept detections is within 0.05 of the share that match a digit.
    scenes = held_out_scenes[:150]
    results = _detect(served, [s.image for s in scenes])  # the default threshold, as a user asks
    kept = right = 0
    scores: list[float] = []
    for result, scene in zip(results, scenes, strict=True):
        truth = torch.as_tensor(scene.boxes)
        used = np.zeros(len(scene.labels), dtype=bool)
        for found in result["detections"]:
            kept += 1
            scores.append(found["score"])
            ious = box_iou(torch.tensor([found["box"]], dtype=torch.float32), truth)[0].numpy()
            hits = (ious >= 0.5) & (scene.labels == found["index"]) & ~used
            if hits.any():
                used[int(np.argmax(np.where(hits, ious, -1)))] = True
                right += 1
    assert kept >= sum(len(s.labels) for s in scenes) * 0.95  # recall at the default threshold
    assert right / kept == pytest.approx(float(np.mean(scores)), abs=0.05)


def test_calibration_rescales_the_centre_logit_only() -> None:
    torch.manual_seed(0)
    module = detectors.DigitsDetector().eval()
    x = torch.rand(2, 1, 128, 128)
    with torch.inference_mode():
        raw = module(x)
        module.centre_calibration.copy_(torch.tensor([3.0, 1.5]))
        calibrated = module(x)
    torch.testing.assert_close(calibrated[:, :1], raw[:, :1] * 3.0 + 1.5)
    torch.testing.assert_close(calibrated[:, 1:], raw[:, 1:])


def test_a_varied_scene_not_coded_as_jpeg_is_its_own_png() -> None:
    """varied_scene codes only JPEG pictures: a PNG would decode to the very same pixels."""
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(0.5, 0.4, (37, 53)), -0.2, 1.2)
    plain = picture(pixels)
    decoded = Image.open(io.BytesIO(encode_picture(pixels))).convert("L")
    assert decoded.mode == plain.mode == "L"
    assert np.array_equal(np.asarray(decoded), np.asarray(plain))
    # JPEG does change them: it is the one coding a varied scene goes through.
    jpeg = Image.open(io.BytesIO(encode_picture(pixels, 30))).convert("L")
    assert not np.array_equal(np.asarray(jpeg), np.asarray(plain))
