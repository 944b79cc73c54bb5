"""The bundled denoisers: held-out PSNR gain, original geometry, parameters, tensors, weights pins."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from contract.params import DenoisingParams
from models import denoisers
from models.images import decode_image
from models.registry import ModelSpec, Task, get_spec
from models.training.data import render_digit
from models.weights import BUNDLED_DIR, sha256_file
from tests.answers import answers
from tests.conftest import encode

Served = tuple[ModelSpec, torch.nn.Module]


@pytest.fixture(scope="module")
def served() -> Served:
    spec = get_spec("digits_denoiser")
    return spec, spec.build()


def _predict(served: Served, images: list[Image.Image], params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the serving layer does for :predict: preprocess each image, batched forward, postprocess."""
    spec, module = served
    with torch.inference_mode():
        outputs = spec.forward(module, [spec.preprocess(img) for img in images])
    return answers(spec, outputs, [img.size for img in images], **params)


def _png(result: Mapping[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(result["image"])))


def _restore(served: Served, batch: torch.Tensor) -> torch.Tensor:
    spec, module = served
    with torch.inference_mode():
        return torch.stack([out["image"] for out in spec.forward(module, list(batch))])


def _gains(served: Served, clean: torch.Tensor) -> torch.Tensor:
    noisy = denoisers.add_noise(clean, 0.3, torch.Generator().manual_seed(1234))
    return denoisers.psnr(_restore(served, noisy), clean) - denoisers.psnr(noisy, clean)


def test_held_out_psnr_gain_at_sigma_0_3_is_at_least_5_db(
    served: Served, held_out_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    spec, _ = served
    images, _ = held_out_digits
    # Held-out digits as a client sends them: PNG pictures in both polarities.
    pngs = [encode(render_digit(img, ink_on_paper=ink)) for ink in (True, False) for img in images]
    clean = torch.stack([spec.preprocess(decode_image(png, spec.image_mode)) for png in pngs])
    gains = _gains(served, clean)
    assert float(gains.mean()) >= 5.0
    # Either polarity on its own is restored, not just the average of both.
    assert float(gains[: len(images)].mean()) >= 4.0
    assert float(gains[len(images) :].mean()) >= 4.0
    report = json.loads((BUNDLED_DIR / "digits_denoiser.json").read_text())
    assert float(gains.mean()) == pytest.approx(report["psnr_gain_db"], abs=0.05)


def test_restored_png_has_the_original_size(served: Served, digit_pngs: list[tuple[bytes, int]]) -> None:
    digit = decode_image(digit_pngs[0][0], "L").resize((90, 50))
    photo = Image.new("L", (31, 77), 200)
    results = _predict(served, [digit, photo], {})
    assert [r["size"] for r in results] == [[90, 50], [31, 77]]
    for result, original in zip(results, (digit, photo), strict=True):
        assert set(result) == {"image", "size"}
        img = _png(result)
        assert (img.format, img.mode, img.size) == ("PNG", "L", original.size)
    json.dumps(results)


def test_restored_picture_keeps_polarity_and_geometry(served: Served, digit_pngs: list[tuple[bytes, int]]) -> None:
    dark_on_light = decode_image(digit_pngs[1][0], "L")
    light_on_dark = Image.eval(dark_on_light, lambda v: 255 - v)
    for img in (dark_on_light, light_on_dark):
        restored = np.asarray(_png(_predict(served, [img], {})[0]), dtype=np.float32) / 255
        original = np.asarray(img, dtype=np.float32) / 255
        # The same picture comes back (same place, same polarity), not a re-centred or inverted digit.
        assert np.corrcoef(restored.ravel(), original.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("flag", [True, "true", "True", "1", 1])
def test_return_latent_adds_the_latent_code(served: Served, digit_pngs: list[tuple[bytes, int]], flag: Any) -> None:
    result = _predict(served, [decode_image(digit_pngs[0][0], "L")], {"return_latent": flag})[0]
    assert len(result["latent"]) == denoisers.DIGITS_LATENT
    assert all(isinstance(v, float) for v in result["latent"])


@pytest.mark.parametrize("flag", [False, "false", "0", 0])
def test_no_latent_unless_asked(served: Served, digit_pngs: list[tuple[bytes, int]], flag: Any) -> None:
    result = _predict(served, [decode_image(digit_pngs[0][0], "L")], {"return_latent": flag})[0]
    assert "latent" not in result


@pytest.mark.parametrize(
    "params",
    [
        {"return_latent": "maybe"},
        {"return_latent": 2},
        {"return_latent": None},
    ],
)
def test_invalid_parameters_are_refused_before_any_denoiser_sees_them(params: dict[str, Any]) -> None:
    # The API validates them with the task's model, once; denoisers receive only valid ones.
    with pytest.raises(ValueError, match="return_latent"):
        DenoisingParams.model_validate(params)


def test_tensor_outputs_match_the_declared_v2_outputs(served: Served) -> None:
    spec, module = served
    with torch.inference_mode():
        outputs = spec.forward(module, [spec.preprocess(Image.new("L", (40, 30), 255))] * 3)
    tensors = spec.tensor_outputs(outputs)
    assert {o.name: (o.datatype, o.shape) for o in spec.outputs} == {
        "images": ("FP32", (-1, 1, 28, 28)),
        "latent": ("FP32", (-1, denoisers.DIGITS_LATENT)),
    }
    assert tensors["images"].dtype == np.float32
    assert tensors["images"].shape == (3, 1, 28, 28)
    assert tensors["latent"].dtype == np.float32
    assert tensors["latent"].shape == (3, denoisers.DIGITS_LATENT)
    assert tensors["images"].min() >= 0.0
    assert tensors["images"].max() <= 1.0


def test_preprocess_resizes_the_whole_picture_without_cropping(served: Served) -> None:
    spec, _ = served
    img = Image.new("L", (100, 50), 0)
    img.paste(255, (0, 0, 50, 50))  # left half white
    x = spec.preprocess(img.convert("RGB"))
    assert tuple(x.shape) == spec.input_shape == (1, 28, 28)
    assert float(x[0, :, :12].mean()) > 0.95
    assert float(x[0, :, 16:].mean()) < 0.05


def test_spec_metadata_describes_a_denoiser(served: Served) -> None:
    spec, _ = served
    assert spec.task == Task.DENOISING
    assert spec.family == "bundled.digits"
    assert spec.weights.source == "bundled"
    assert spec.weights.sha256 == denoisers.DIGITS_WEIGHTS_SHA256


def test_random_weights_are_labelled_random() -> None:
    spec = get_spec("digits_denoiser", weights="random")
    assert spec.weights.label == "random"
    assert not spec.build().training


@pytest.fixture(scope="module")
def photo() -> Served:
    spec = get_spec("photo_denoiser")
    return spec, spec.build()


def test_photo_denoiser_gains_at_least_2_db_on_a_photo_it_never_saw(photo: Served) -> None:
    spec, _ = photo
    # Trained on china.jpg only; flower.jpg, sent as a client would (PNG), is new to it.
    flower = decode_image(encode(Image.fromarray(load_sample_image("flower.jpg"))), spec.image_mode)
    clean = spec.preprocess(flower)[None]
    noisy = denoisers.add_noise(clean, 0.1, torch.Generator().manual_seed(1234))
    gain = float((denoisers.psnr(_restore(photo, noisy), clean) - denoisers.psnr(noisy, clean))[0])
    assert gain >= 2.0
    report = json.loads((BUNDLED_DIR / "photo_denoiser.json").read_text())
    assert gain == pytest.approx(report["psnr_gain_db"], abs=0.05)


def test_photo_denoiser_answers_a_colour_png_at_the_original_size(photo: Served, photo_jpeg: bytes) -> None:
    spec, _ = photo
    img = decode_image(photo_jpeg, spec.image_mode)
    result = _predict(photo, [img], {})[0]
    assert set(result) == {"image", "size"}
    assert result["size"] == [640, 427]
    png = _png(result)
    assert (png.format, png.mode, png.size) == ("PNG", "RGB", (640, 427))


def test_photo_denoiser_refuses_return_latent(photo: Served) -> None:
    with pytest.raises(ValueError, match="no latent code"):
        _predict(photo, [Image.new("RGB", (20, 20))], {"return_latent": "true"})


def test_photo_denoiser_tensor_outputs_match_the_declared_v2_outputs(photo: Served) -> None:
    spec, module = photo
    with torch.inference_mode():
        outputs = spec.forward(module, [spec.preprocess(Image.new("RGB", (300, 200), (10, 200, 30)))] * 2)
    tensors = spec.tensor_outputs(outputs)
    assert {o.name: (o.datatype, o.shape) for o in spec.outputs} == {"images": ("FP32", (-1, 3, 256, 256))}
    assert set(tensors) == {"images"}
    assert tensors["images"].dtype == np.float32
    assert tensors["images"].shape == (2, 3, 256, 256)
    assert spec.task == Task.DENOISING


@pytest.mark.parametrize(
    ("stem", "file", "pin"),
    [
        ("digits_denoiser", denoisers.DIGITS_WEIGHTS_FILE, denoisers.DIGITS_WEIGHTS_SHA256),
        ("photo_denoiser", denoisers.PHOTO_WEIGHTS_FILE, denoisers.PHOTO_WEIGHTS_SHA256),
    ],
)
def test_weights_pin_file_and_training_report_agree(stem: str, file: str, pin: str) -> None:
    report = json.loads((BUNDLED_DIR / f"{stem}.json").read_text())
    assert sha256_file(BUNDLED_DIR / file) == pin == report["sha256"]
    assert (BUNDLED_DIR / file).stat().st_size < 5_000_000
