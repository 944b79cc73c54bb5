"""digits_dcgan: a conditional DCGAN that draws handwritten digits, trained here on scikit-learn's digits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from contract.answers import GeneratedImage
from models import weights as wsrc
from models.images import png_base64
from models.registry import Item, ModelSpec, Preprocess, Task, TensorSpec, WeightsInfo, register

LATENT_DIM = 64
NUM_CLASSES = 10
IMAGE_SIZE = 28
CATEGORIES = tuple(str(d) for d in range(NUM_CLASSES))
WEIGHTS_FILE = "digits_dcgan.safetensors"
# Pinned by models/training/train_digits_dcgan.py; tests check pin, file and report agree.
WEIGHTS_SHA256 = "9fa5b5564776c68ee4228b3dc5ed5e3c1ee6a9b96146b08e30f0fc0bb37eaa6d"
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


class Generator(nn.Module):
    """(B, LATENT_DIM + 10) noise and one-hot label -> (B, 1, 28, 28) in [-1, 1], ink bright on black."""

    def __init__(self, latent_dim: int = LATENT_DIM, num_classes: int = NUM_CLASSES, width: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.width = width
        # DCGAN: project and reshape, then strided transposed convolutions with BatchNorm + ReLU.
        self.project = nn.Linear(latent_dim + num_classes, width * 2 * 7 * 7, bias=False)
        self.upsample = nn.Sequential(
            nn.BatchNorm2d(width * 2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width * 2, width, 4, stride=2, padding=1, bias=False),  # 14x14
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1, bias=False),  # 28x28
            nn.BatchNorm2d(width // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, 1, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(x).view(-1, self.width * 2, 7, 7)
        out: torch.Tensor = self.upsample(h)
        return out


class Discriminator(nn.Module):
    """(B, 1, 28, 28) image in [-1, 1] and (B,) labels -> real/fake and class logits; training only.

    Strided convolutions with LeakyReLU (DCGAN); the label enters by projection (Miyato and
    Koyama 2018): the logit gains <embed(label), features>, so D judges "a real 7", not "real".
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width // 2, 4, stride=2, padding=1),  # 14x14, no BatchNorm on D's input (DCGAN)
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, width, 4, stride=2, padding=1, bias=False),  # 7x7
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1, bias=False),  # 4x4
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(),
        )
        features = width * 2 * 4 * 4
        self.real = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)
        # Auxiliary classifier (AC-GAN, Odena et al. 2017): asks the generator for digits a reader can tell apart.
        self.classify = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real/fake logits (B,), class logits (B, num_classes))."""
        h = self.features(x)
        logits = self.real(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)
        return logits, self.classify(h)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: weights from N(0, 0.02), BatchNorm scales from N(1, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.BatchNorm2d) and m.bias is not None:
            nn.init.zeros_(m.bias)


def parse_label(value: Any) -> int:
    """A digit label given as int 0-9 or string "0".."9"; anything else is a ValueError."""
    if isinstance(value, bool):  # bool is an int subclass; True is not a digit
        raise ValueError(f"label must be a digit 0-9, got {value!r}")
    if isinstance(value, int) and 0 <= value < NUM_CLASSES:
        return value
    if isinstance(value, str) and value.strip() in CATEGORIES:
        return int(value.strip())
    raise ValueError(f"label must be a digit 0-9 (int or string), got {value!r}")


def latent_inputs(latents: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """One input per image: its noise vector followed by the one-hot label."""
    onehot = nn.functional.one_hot(labels, NUM_CLASSES).to(latents.dtype)
    return list(torch.cat([latents, onehot], dim=1).unbind(0))


def sample(num_images: int, seed: int, params: Mapping[str, Any]) -> list[torch.Tensor]:
    """Generation inputs: noise from a generator seeded by `seed`, label from params or the same generator."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not _SEED_MIN <= seed <= _SEED_MAX:
        raise ValueError(f"seed must be an integer in [{_SEED_MIN}, {_SEED_MAX}], got {seed!r}")
    label = params.get("label")
    fixed = None if label is None else parse_label(label)
    # A private generator: the global RNG is shared by every request in the process.
    generator = torch.Generator().manual_seed(seed)
    # Noise first, then labels: the same seed keeps its "handwriting" whichever digit is asked for.
    latents = torch.randn(num_images, LATENT_DIM, generator=generator)
    if fixed is None:
        labels = torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)
    else:
        labels = torch.full((num_images,), fixed, dtype=torch.long)
    return latent_inputs(latents, labels)


def generation_forward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """Batched generator pass; each item keeps its image in [0, 1] and the digit its input asked for."""
    batch = torch.stack(list(inputs))
    images = ((module(batch).float() + 1.0) / 2.0).clamp(0.0, 1.0)
    indices = batch[:, -NUM_CLASSES:].argmax(dim=1).tolist()
    return [{"image": image, "index": index} for image, index in zip(images.unbind(0), indices, strict=True)]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, H, W) float image in [0, 1] -> (H, W) uint8 pixels, rounded."""
    return (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).squeeze(0).numpy()


def generation_postprocess(outputs: Sequence[Any], items: Sequence[Item[None]]) -> list[GeneratedImage]:
    """Per image: the 28x28 greyscale PNG (base64) and the digit it was asked to show."""
    return [
        GeneratedImage(
            image=png_base64(Image.fromarray(to_uint8(out["image"]), "L")),
            label=CATEGORIES[out["index"]],
            index=out["index"],
        )
        for out in outputs
    ]


def generation_tensors(outputs: Sequence[Any]) -> dict[str, np.ndarray]:
    """Open Inference Protocol outputs: uint8 images and their int64 labels."""
    return {
        "images": np.stack([to_uint8(out["image"])[None] for out in outputs]),
        "labels": np.asarray([out["index"] for out in outputs], dtype=np.int64),
    }


OUTPUTS = (
    TensorSpec("images", "UINT8", (-1, 1, IMAGE_SIZE, IMAGE_SIZE)),
    TensorSpec("labels", "INT64", (-1,)),
)


def _no_image_input(name: str) -> Preprocess:
    def preprocess(img: Image.Image) -> torch.Tensor:
        raise ValueError(f"{name} is a generation model and has no image input; use :generate")

    return preprocess


def _build_random() -> nn.Module:
    return Generator().eval()


def _build() -> nn.Module:
    model = Generator()
    model.load_state_dict(wsrc.load_bundled(WEIGHTS_FILE, WEIGHTS_SHA256), strict=True)
    return model.eval()


def _factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
    if weights not in (None, "bundled", "random"):
        raise wsrc.WeightsError(f"{name}: weights must be 'bundled' (default) or 'random'")
    if weights == "random":
        info = WeightsInfo("random", "random")
        build = _build_random
    else:
        info = WeightsInfo("bundled", WEIGHTS_FILE, WEIGHTS_SHA256)
        build = _build
    return ModelSpec(
        name=name,
        task=Task.GENERATION,
        build=build,
        preprocess=_no_image_input(name),
        postprocess=generation_postprocess,
        tensor_outputs=generation_tensors,
        outputs=OUTPUTS,
        categories=CATEGORIES,
        input_size=(IMAGE_SIZE, IMAGE_SIZE),
        weights=info,
        image_mode="L",
        family="bundled.digits",
        description=(
            "Conditional DCGAN drawing 28x28 greyscale digits, light ink on a dark background "
            "(MNIST style); parameter label: 0-9, or drawn from the seed "
            "(models/training/train_digits_dcgan.py)"
        ),
        forward=generation_forward,
        sample=sample,
        latent_shape=(LATENT_DIM + NUM_CLASSES,),
    )


register("digits_dcgan", Task.GENERATION, _factory, family="bundled.digits")
