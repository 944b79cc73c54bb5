"""The bundled digits_dcgan: digits_cnn reads what it draws, determinism, parameters, results, weights pin."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from models import dcgan, digits
from models.images import decode_image
from models.registry import ModelSpec, Task, get_spec
from models.training.train_digits_dcgan import reading_classifier
from models.weights import BUNDLED_DIR, WeightsIntegrityError, sha256_file
from tests.answers import answers

Served = tuple[ModelSpec, torch.nn.Module]


@pytest.fixture(scope="module")
def served() -> Served:
    spec = get_spec("digits_dcgan")
    return spec, spec.build()


def _generate(served: Served, num_images: int, seed: int, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the serving layer does for :generate: sample, batched forward, postprocess."""
    spec, module = served
    assert spec.sample is not None
    inputs = spec.sample(num_images, seed, params)
    with torch.inference_mode():
        outputs = spec.forward(module, inputs)
    return answers(spec, outputs, [None] * num_images)


def _png(result: Mapping[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(result["image"])))


def test_digits_cnn_recognises_the_requested_digit_in_at_least_80_percent() -> None:
    generator_spec = get_spec("digits_dcgan")
    generator = generator_spec.build()
    reader_spec = get_spec("digits_cnn")
    reader = reader_spec.build()
    correct = 0
    for digit in range(10):
        # 50 per digit; digit d uses seed d (the training report measures the same samples).
        results = _generate((generator_spec, generator), 50, digit, {"label": digit})
        assert {r["index"] for r in results} == {digit}
        # As a client would: decode the PNG, then digits_cnn's own preprocess.
        batch = torch.stack([reader_spec.preprocess(decode_image(base64.b64decode(r["image"]), "L")) for r in results])
        with torch.inference_mode():
            correct += int((reader(batch).argmax(dim=1) == digit).sum())
    rate = correct / 500
    assert rate >= 0.8
    report = json.loads((BUNDLED_DIR / "digits_dcgan.json").read_text())
    assert rate == pytest.approx(report["recognition_rate"], abs=0.01)


def test_same_seed_and_params_give_byte_identical_pngs(served: Served) -> None:
    first = _generate(served, 4, 123, {"label": "3"})
    second = _generate(served, 4, 123, {"label": "3"})
    assert [r["image"] for r in first] == [r["image"] for r in second]


def test_different_seeds_give_different_images(served: Served) -> None:
    a = _generate(served, 3, 1, {"label": 5})
    b = _generate(served, 3, 2, {"label": 5})
    assert all(x["image"] != y["image"] for x, y in zip(a, b, strict=True))
    assert len({r["image"] for r in a}) == 3  # and different images within one request


def test_label_as_int_or_string_gives_the_same_images(served: Served) -> None:
    assert _generate(served, 2, 9, {"label": 7}) == _generate(served, 2, 9, {"label": "7"})


def test_labels_are_drawn_from_the_seed_when_absent(served: Served) -> None:
    results = _generate(served, 40, 5, {})
    labels = [r["index"] for r in results]
    assert labels == [r["index"] for r in _generate(served, 40, 5, {})]
    assert len(set(labels)) >= 5
    assert all(r["label"] == str(r["index"]) for r in results)


@pytest.mark.parametrize("label", [10, -1, "10", "a", "", "3.0", 3.0, True, [3]])
def test_invalid_label_is_a_value_error(served: Served, label: object) -> None:
    spec, _ = served
    assert spec.sample is not None
    with pytest.raises(ValueError, match="label"):
        spec.sample(1, 0, {"label": label})


@pytest.mark.parametrize(("num_images", "seed"), [(0, 0), (-1, 0), (1, 2**64), (1, "1"), (True, 0)])
def test_invalid_count_or_seed_is_a_value_error(served: Served, num_images: Any, seed: Any) -> None:
    spec, _ = served
    assert spec.sample is not None
    with pytest.raises(ValueError, match=r"num_images|seed"):
        spec.sample(num_images, seed, {})


def test_sample_leaves_the_global_rng_alone(served: Served) -> None:
    spec, _ = served
    assert spec.sample is not None
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    spec.sample(8, 42, {})
    assert torch.equal(torch.rand(3), expected)


def test_result_is_a_28x28_greyscale_png_with_its_label(served: Served) -> None:
    spec, _ = served
    results = _generate(served, 2, 0, {"label": 4})
    for result in results:
        assert set(result) == {"image", "label", "index"}
        assert (result["label"], result["index"]) == ("4", 4)
        img = _png(result)
        assert (img.format, img.mode, img.size) == ("PNG", "L", spec.input_size)
    json.dumps(results)


def test_drawn_digits_are_light_ink_on_a_dark_background(served: Served) -> None:
    for result in _generate(served, 10, 3, {}):
        pixels = np.asarray(_png(result), dtype=np.float32)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert np.median(border) < 60
        assert pixels.max() > 200


def test_requests_batched_together_keep_their_own_labels(served: Served) -> None:
    spec, module = served
    assert spec.sample is not None
    ones, eights = spec.sample(3, 0, {"label": 1}), spec.sample(2, 0, {"label": "8"})
    assert tuple(ones[0].shape) == spec.input_shape
    with torch.inference_mode():
        together = spec.forward(module, ones + eights)
        alone = spec.forward(module, eights)
    assert [r["index"] for r in answers(spec, together, [None] * 5)] == [1, 1, 1, 8, 8]
    # A request's pictures do not depend on who shared its batch (at most rounding of one grey level).
    diff = spec.tensor_outputs(together[3:])["images"].astype(int) - spec.tensor_outputs(alone)["images"]
    assert np.abs(diff).max() <= 1


def test_tensor_outputs_match_the_declared_v2_outputs(served: Served) -> None:
    spec, module = served
    assert spec.sample is not None
    with torch.inference_mode():
        outputs = spec.forward(module, spec.sample(3, 0, {"label": 2}))
    tensors = spec.tensor_outputs(outputs)
    assert {o.name: (o.datatype, o.shape) for o in spec.outputs} == {
        "images": ("UINT8", (-1, 1, 28, 28)),
        "labels": ("INT64", (-1,)),
    }
    assert tensors["images"].dtype == np.uint8
    assert tensors["images"].shape == (3, 1, 28, 28)
    assert tensors["labels"].dtype == np.int64
    assert tensors["labels"].tolist() == [2, 2, 2]
    png = np.asarray(_png(answers(spec, outputs, [None] * 3)[0]))
    assert np.array_equal(png, tensors["images"][0, 0])


def test_spec_metadata_describes_a_generator(served: Served) -> None:
    spec, _ = served
    assert spec.task == Task.GENERATION
    assert spec.family == "bundled.digits"
    assert spec.input_shape == (dcgan.LATENT_DIM + 10,)
    assert spec.categories == tuple(str(d) for d in range(10))
    assert spec.weights.source == "bundled"
    assert spec.weights.sha256 == dcgan.WEIGHTS_SHA256


def test_preprocess_refuses_an_image_input(served: Served) -> None:
    spec, _ = served
    with pytest.raises(ValueError, match="no image input"):
        spec.preprocess(Image.new("L", (28, 28)))


def test_random_weights_are_labelled_and_still_draw() -> None:
    spec = get_spec("digits_dcgan", weights="random")
    assert spec.weights.label == "random"
    results = _generate((spec, spec.build()), 2, 0, {"label": 0})
    assert [_png(r).size for r in results] == [(28, 28), (28, 28)]


def test_weights_pin_file_and_training_report_agree() -> None:
    report = json.loads((BUNDLED_DIR / "digits_dcgan.json").read_text())
    actual = sha256_file(BUNDLED_DIR / dcgan.WEIGHTS_FILE)
    assert actual == dcgan.WEIGHTS_SHA256 == report["sha256"]
    assert (BUNDLED_DIR / dcgan.WEIGHTS_FILE).stat().st_size < 5_000_000


def test_training_reads_generated_digits_with_the_digits_cnn_trained_beside_it(tmp_path: Path) -> None:
    """`make train` retrains digits_cnn first; the GAN's reader is that file, pinned by its report, not the code's pin."""
    shutil.copy(BUNDLED_DIR / digits.WEIGHTS_FILE, tmp_path / digits.WEIGHTS_FILE)
    report = json.loads((BUNDLED_DIR / "digits_cnn.json").read_text())
    (tmp_path / "digits_cnn.json").write_text(json.dumps(report))
    classifier, pin = reading_classifier(tmp_path)
    assert pin == sha256_file(tmp_path / digits.WEIGHTS_FILE)
    reference = get_spec("digits_cnn").build()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(classifier.state_dict()[name], tensor)

    (tmp_path / "digits_cnn.json").write_text(json.dumps({**report, "sha256": "0" * 64}))
    with pytest.raises(WeightsIntegrityError):
        reading_classifier(tmp_path)
