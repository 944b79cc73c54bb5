"""The classifiers' uint8 fast path computes what the weights' own preset computes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision.models import get_model_weights
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

from models.classifiers import uint8_transform


def photos() -> list[torch.Tensor]:
    """The two scikit-learn photos, as decoded from JPEG at two sizes (uint8 CHW)."""
    out = []
    for name in ("china.jpg", "flower.jpg"):
        for size in ((640, 480), (333, 517)):
            buffer = io.BytesIO()
            Image.fromarray(load_sample_image(name)).resize(size).save(buffer, "JPEG", quality=90)
            out.append(tvf.pil_to_tensor(Image.open(buffer).convert("RGB")))
    return out


@pytest.mark.parametrize(
    "model",
    ["resnet18", "mobilenet_v3_large", "vit_b_16", "inception_v3", "convnext_tiny"],
)
def test_fast_preprocess_is_within_one_intensity_level_of_the_preset(model: str) -> None:
    weights = next(iter(get_model_weights(model)))
    preset = weights.transforms()
    fast = uint8_transform(preset)
    assert fast is not preset
    # One uint8 level after normalisation by the smallest std.
    level = 1.0 / 255.0 / min(preset.std)
    for img in photos():
        want, got = preset(img), fast(img)
        assert got.shape == want.shape
        assert got.dtype == torch.float32
        diff = (got - want).abs()
        assert float(diff.max()) <= 1.01 * level, model
        assert float(diff.mean()) < 0.25 * level, model  # most pixels agree exactly; rounding moves some


def test_other_transforms_pass_through_unchanged() -> None:
    bicubic = next(iter(get_model_weights("efficientnet_b3"))).transforms()
    assert uint8_transform(bicubic) is bicubic
    other = v2.Compose([v2.ToDtype(torch.float32, scale=True)])
    assert uint8_transform(other) is other
    assert np.isclose(float(uint8_transform(other)(torch.full((1, 2, 2), 255, dtype=torch.uint8)).max()), 1.0)
