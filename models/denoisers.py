"""Denoisers trained here: digits_denoiser (an autoencoder for digits) and photo_denoiser (DnCNN-style)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from contract.answers import DenoisingPrediction
from contract.params import DenoisingParams
from models import weights as wsrc
from models.images import png_base64
from models.registry import Item, ModelSpec, Postprocess, Preprocess, Task, TensorSpec, WeightsInfo, register

DIGITS_SIZE = 28
DIGITS_LATENT = 32
DIGITS_WEIGHTS_FILE = "digits_denoiser.safetensors"
# Pinned by models/training/train_digits_denoiser.py; tests check pin, file and report agree.
DIGITS_WEIGHTS_SHA256 = "0e4669ef0896a75b235ad3266d650c20cfeff0cf7f44c36c5a13bcf95e9fab5b"
NOISE_SIGMA = 0.3  # the noise digits_denoiser was trained for, as a fraction of full range

PHOTO_SIZE = 256
PHOTO_WEIGHTS_FILE = "photo_denoiser.safetensors"
# Pinned by models/training/train_photo_denoiser.py; tests check pin, file and report agree.
PHOTO_WEIGHTS_SHA256 = "a2affd9d91bb94f477e0776f2d59b493bf4181b6dadebb9f27121523c84d8a1c"


class DenoisingAutoencoder(nn.Module):
    """(B, 1, 28, 28) in [0, 1] -> (restored (B, 1, 28, 28) in [0, 1], latent code (B, latent_dim)).

    Everything the decoder draws passes through the latent vector: the bottleneck keeps what
    a digit looks like and drops what noise looks like.
    """

    def __init__(self, latent_dim: int = DIGITS_LATENT, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width * 2, 4, stride=2, padding=1),  # 7x7
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(width * 2 * 7 * 7, latent_dim),
        )
        self.expand = nn.Sequential(nn.Linear(latent_dim, width * 2 * 7 * 7), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(width * 2, width, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),  # 28x28
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 3, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> latent codes."""
        code: torch.Tensor = self.encoder(x)
        return code

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Latent codes -> images in [0, 1]."""
        image: torch.Tensor = self.decoder(self.expand(code).view(-1, self.width * 2, 7, 7))
        return image

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(x)
        return self.decode(code), code


class ResidualDenoiser(nn.Module):
    """DnCNN-style (Zhang et al. 2017), small: plain 3x3 convolutions predict the noise, which is subtracted.

    (B, 3, H, W) in [0, 1] -> restored (B, 3, H, W) in [0, 1]. Fully convolutional: any size works;
    the served spec fixes 256x256 so that batches stack.
    """

    def __init__(self, channels: int = 3, width: int = 32, depth: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residual learning: the noise is simpler to predict than the picture.
        noise: torch.Tensor = self.body(x)
        return (x - noise).clamp(0.0, 1.0)


def psnr(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB of images in [0, 1], over all but the first dim."""
    mse = (restored.float() - clean.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def add_noise(clean: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of `sigma` (fraction of full range), clipped back to [0, 1]."""
    return (clean + sigma * torch.randn(clean.shape, generator=generator)).clamp(0.0, 1.0)


def resize_preprocess(size: int, mode: str) -> Preprocess:
    """Whole picture -> `mode` `size`x`size` float tensor in [0, 1]; no crop, so the geometry maps back."""

    def preprocess(img: Image.Image) -> torch.Tensor:
        small = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(small, dtype=np.float32).reshape(size, size, -1) / 255.0
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    return preprocess


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1 or 3, H, W) float image in [0, 1] -> an "L" or "RGB" picture."""
    pixels = (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        return Image.fromarray(pixels[0].numpy(), "L")
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")


def autoencoder_forward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Batched pass of an autoencoder; each item keeps its restored image and its latent code."""
    restored, codes = module(torch.stack(list(inputs)))
    return [{"image": image, "latent": code} for image, code in zip(restored.unbind(0), codes.unbind(0), strict=True)]


def residual_forward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Batched pass of a denoiser without a latent code; each item keeps its restored image."""
    return [{"image": image} for image in module(torch.stack(list(inputs))).unbind(0)]


def denoising_postprocess(name: str, size: int, has_latent: bool) -> Postprocess:
    """Per image: the restored PNG (base64) at the original size, plus the latent code if asked."""

    def postprocess(outputs: Sequence[Any], items: Sequence[Item[DenoisingParams]]) -> list[DenoisingPrediction]:
        # Checked before any image is encoded: a model without a code cannot honour return_latent.
        if not has_latent and any(item.params.return_latent for item in items):
            raise ValueError(f"return_latent: {name} has no latent code")
        results: list[DenoisingPrediction] = []
        for out, item in zip(outputs, items, strict=True):
            w, h = item.size or (size, size)
            img = to_pil(out["image"])
            if (w, h) != img.size:
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            latent = [float(v) for v in out["latent"].float().tolist()] if item.params.return_latent else None
            results.append(DenoisingPrediction(image=png_base64(img), size=[w, h], latent=latent))
        return results

    return postprocess


def denoising_tensors(outputs: Sequence[Any]) -> dict[str, np.ndarray]:
    """Open Inference Protocol outputs: restored images at model resolution, and latent codes if any."""
    tensors = {"images": torch.stack([out["image"] for out in outputs]).float().numpy()}
    if outputs and "latent" in outputs[0]:
        tensors["latent"] = torch.stack([out["latent"] for out in outputs]).float().numpy()
    return tensors


@dataclass(frozen=True)
class _Bundled:
    """What differs between the bundled denoisers."""

    architecture: Callable[[], nn.Module]
    weights_file: str
    weights_sha256: str
    size: int
    mode: str
    has_latent: bool
    description: str

    def build(self, random: bool) -> nn.Module:
        """The architecture, with the pinned bundled weights unless `random`."""
        model = self.architecture()
        if not random:
            model.load_state_dict(wsrc.load_bundled(self.weights_file, self.weights_sha256), strict=True)
        return model.eval()

    def outputs(self) -> tuple[TensorSpec, ...]:
        """The v2 output tensors."""
        channels = len(self.mode)
        images = TensorSpec("images", "FP32", (-1, channels, self.size, self.size))
        if self.has_latent:
            return (images, TensorSpec("latent", "FP32", (-1, DIGITS_LATENT)))
        return (images,)

    def factory(self, name: str, weights: str | None, sha256: str | None) -> ModelSpec:
        """Spec factory: weights 'bundled' (default) or 'random'."""
        if weights not in (None, "bundled", "random"):
            raise wsrc.WeightsError(f"{name}: weights must be 'bundled' (default) or 'random'")
        random = weights == "random"
        info = (
            WeightsInfo("random", "random")
            if random
            else WeightsInfo("bundled", self.weights_file, self.weights_sha256)
        )
        return ModelSpec(
            name=name,
            task=Task.DENOISING,
            build=functools.partial(self.build, random),
            preprocess=resize_preprocess(self.size, self.mode),
            postprocess=denoising_postprocess(name, self.size, self.has_latent),
            tensor_outputs=denoising_tensors,
            outputs=self.outputs(),
            categories=(),
            input_size=(self.size, self.size),
            weights=info,
            image_mode=self.mode,
            family="bundled.digits" if self.has_latent else "bundled.photos",
            description=self.description,
            forward=autoencoder_forward if self.has_latent else residual_forward,
        )


DIGITS = _Bundled(
    architecture=DenoisingAutoencoder,
    weights_file=DIGITS_WEIGHTS_FILE,
    weights_sha256=DIGITS_WEIGHTS_SHA256,
    size=DIGITS_SIZE,
    mode="L",
    has_latent=True,
    description=(
        f"Convolutional denoising autoencoder ({DIGITS_LATENT}-float latent code) for greyscale digit "
        f"pictures in either polarity, trained against Gaussian noise of sigma {NOISE_SIGMA}; works at "
        f"{DIGITS_SIZE}x{DIGITS_SIZE} and answers at the original size; parameter return_latent "
        "(models/training/train_digits_denoiser.py)"
    ),
)
PHOTO = _Bundled(
    architecture=ResidualDenoiser,
    weights_file=PHOTO_WEIGHTS_FILE,
    weights_sha256=PHOTO_WEIGHTS_SHA256,
    size=PHOTO_SIZE,
    mode="RGB",
    has_latent=False,
    description=(
        f"Small DnCNN-style residual denoiser for colour photos with Gaussian noise; works at "
        f"{PHOTO_SIZE}x{PHOTO_SIZE} and answers at the original size "
        "(models/training/train_photo_denoiser.py)"
    ),
)

register("digits_denoiser", Task.DENOISING, DIGITS.factory, family="bundled.digits")
register("photo_denoiser", Task.DENOISING, PHOTO.factory, family="bundled.photos")
