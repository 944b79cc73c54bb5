"""Semantic segmentation: every torchvision segmenter by name, and a U-Net trained here on digit scenes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models.segmentation import FCN, DeepLabV3
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from contract.answers import ClassFraction, SegmentationPrediction
from contract.params import SegmentationParams
from models import heldout
from models import weights as wsrc
from models.classifiers import WeightsChoice, build_torchvision, make_preprocess, resolve_weights_choice
from models.images import ink_map, png_base64
from models.registry import Item, ModelSpec, Postprocess, Task, TensorSpec, WeightsInfo, register

MASK_FORMAT = "png;mode=L;value=class_index"
MAX_CLASSES = 256  # class indices travel as 8-bit pixel values (mode "L" PNG, UINT8 tensor)

DIGITS_INPUT_SIZE = 128
DIGITS_CATEGORIES = ("background", *(str(d) for d in range(10)))
DIGITS_WEIGHTS_FILE = "digits_segmenter.safetensors"
# Pinned by models/training/train_digits_segmenter.py; tests check pin, file and report agree.
DIGITS_WEIGHTS_SHA256 = "a0f53f634f87e59eb2322f5fbac50f45a6c02b0dad4c6d53378b1b6ee420c301"


def segmentation_forward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Batch forward: one pass over the stacked inputs, then each item's argmax class map (uint8 HxW)."""
    out = module(torch.stack(list(inputs)))
    # torchvision's segmenters answer a dict ("out", and "aux" when the head is kept).
    logits: torch.Tensor = out["out"] if isinstance(out, Mapping) else out
    # Small uint8 maps on the CPU: postprocess and the v2 tensors read them with numpy.
    return list(logits.argmax(dim=1).to(torch.uint8).cpu().unbind(0))


def segmentation_tensors(outputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Open Inference Protocol output of a segmenter: the class-index mask at input size."""
    return {"mask": torch.stack(list(outputs)).numpy()}


def segmentation_outputs(input_size: tuple[int, int]) -> tuple[TensorSpec, ...]:
    """The v2 output tensor of a segmenter with this input size (height, width)."""
    return (TensorSpec("mask", "UINT8", (-1, *input_size)),)


def class_mask(class_map: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """A class-index map (uint8 HxW) as a mode "L" picture of `size` (width, height)."""
    # NEAREST: a class index must never be blended into another class's index.
    return Image.fromarray(class_map.numpy(), "L").resize(size, Image.Resampling.NEAREST)


def segment_result(
    class_map: torch.Tensor, item: Item[SegmentationParams], categories: Sequence[str]
) -> SegmentationPrediction:
    """One image's answer: its class-index mask at the original size and the classes it shows."""
    min_fraction = item.params.min_fraction
    height, width = class_map.shape
    size = item.size or (width, height)
    mask = class_mask(class_map, size)
    counts = np.bincount(np.asarray(mask).ravel(), minlength=len(categories))
    fractions = counts / (size[0] * size[1])
    present = [i for i in np.flatnonzero(counts).tolist() if fractions[i] >= min_fraction]
    present.sort(key=lambda i: (-fractions[i], i))
    return SegmentationPrediction(
        mask=png_base64(mask),
        mask_format=MASK_FORMAT,
        size=list(size),
        classes=[ClassFraction(label=categories[i], index=i, fraction=float(fractions[i])) for i in present],
    )


def segmentation_postprocess(categories: Sequence[str]) -> Postprocess:
    """Batch postprocess: each item's class map as a PNG at its original size, with class fractions.

    `min_fraction` (0 to 1, default 0) leaves classes covering less of the image out of `classes`;
    the mask itself is the model's full answer.
    """

    def postprocess(
        outputs: Sequence[torch.Tensor], items: Sequence[Item[SegmentationParams]]
    ) -> list[SegmentationPrediction]:
        return [segment_result(out, item, categories) for out, item in zip(outputs, items, strict=True)]

    return postprocess


def _check_categories(name: str, categories: Sequence[str]) -> None:
    if len(categories) > MAX_CLASSES:
        raise wsrc.WeightsError(f"{name}: {len(categories)} classes do not fit an 8-bit class-index mask")


def _square_transform(
    size: int, mean: Sequence[float], std: Sequence[float], interpolation: InterpolationMode
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The weights' normalisation after a resize to a fixed square, so a batch stacks."""

    def transform(img: torch.Tensor) -> torch.Tensor:
        resized = tvf.resize(img, [size, size], interpolation=interpolation, antialias=True)
        normalised: torch.Tensor = tvf.normalize(
            tvf.to_dtype(resized, torch.float32, scale=True), list(mean), list(std)
        )
        return normalised

    return transform


def _segmenter_kwargs(key: str, choice: WeightsChoice, state: wsrc.StateDict | None) -> dict[str, Any]:
    """Builder arguments: never fetch a backbone; classes and auxiliary head as the weights have them."""
    kwargs: dict[str, Any] = {"weights_backbone": None, "num_classes": len(choice.meta.meta["categories"])}
    if state is not None and any(k.startswith("aux_classifier.") for k in state):
        kwargs["aux_loss"] = True
    return kwargs


def _build_torchvision_segmenter(key: str, choice: WeightsChoice) -> nn.Module:
    model = build_torchvision(key, choice, _segmenter_kwargs)
    if isinstance(model, DeepLabV3 | FCN):
        # A training aid: in eval mode it would only cost a second head's forward per batch.
        model.aux_classifier = None
    return model


def torchvision_segmenter(key: str) -> Callable[[str, str | None, str | None], ModelSpec]:
    """Spec factory for the torchvision segmenter `key`."""

    def factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
        choice = resolve_weights_choice(key, name, weights, sha256)
        categories = tuple(choice.meta.meta["categories"])
        _check_categories(name, categories)
        preset = choice.meta.transforms()
        size = int(preset.resize_size[0])
        return ModelSpec(
            name=name,
            task=Task.SEGMENTATION,
            build=functools.partial(_build_torchvision_segmenter, key, choice),
            preprocess=make_preprocess(_square_transform(size, preset.mean, preset.std, preset.interpolation)),
            postprocess=segmentation_postprocess(categories),
            tensor_outputs=segmentation_tensors,
            outputs=segmentation_outputs((size, size)),
            categories=categories,
            input_size=(size, size),
            weights=choice.info,
            family="torchvision.segmentation",
            description=f"torchvision {key} ({choice.meta})",
            forward=segmentation_forward,
        )

    return factory


def _conv(cin: int, cout: int, *, dilation: int = 1, norm: bool = True) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=not norm)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)] if norm else [conv, nn.ReLU(inplace=True)]


class DigitsUNet(nn.Module):
    """A three-level U-Net (16-32-64 channels): 1x128x128 greyscale in, per-pixel class logits out."""

    def __init__(self, num_classes: int = len(DIGITS_CATEGORIES)) -> None:
        super().__init__()
        # No batch norm at full resolution: on a CPU its backward pass there costs about as much
        # as the convolutions; He initialisation keeps those two layers' signal alive instead.
        self.enc1 = nn.Sequential(*_conv(1, 16, norm=False), *_conv(16, 16, norm=False))
        self.enc2 = nn.Sequential(*_conv(16, 32), *_conv(32, 32))
        # Dilated convolutions at the coarsest level: a whole 44-pixel digit must fall inside
        # every pixel's receptive field to tell which digit the pixel's ink belongs to.
        self.bottom = nn.Sequential(*_conv(32, 64), *_conv(64, 64, dilation=2), *_conv(64, 64, dilation=4))
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = nn.Sequential(*_conv(64, 32), *_conv(32, 32))
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec1 = nn.Sequential(*_conv(32, 16, norm=False), *_conv(16, 16, norm=False))
        self.head = nn.Conv2d(16, num_classes, 1)
        # Class scores of the coarsest level are added to the final ones (as FCN's skips do):
        # a short path from the loss to the features that can tell one digit from another.
        self.coarse_head = nn.Conv2d(64, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(1.0 - x)  # ink bright, empty paper near zero
        e2 = self.enc2(self.pool(e1))
        bottom = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(bottom), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        coarse = nn.functional.interpolate(self.coarse_head(bottom), size=x.shape[-2:], mode="bilinear")
        logits: torch.Tensor = self.head(d1) + coarse
        return logits


def digit_scene_tensor(img: Image.Image) -> torch.Tensor:
    """Any picture -> 1x128x128 float tensor in [0, 1], dark ink on white paper.

    Used for training and serving alike: the picture is resized to 128x128 and taken as ink
    against its paper (`models.images.ink_map`), so light ink on a dark board, grey paper and
    faint ink all give the same input.
    """
    resized = img.convert("L").resize((DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE), Image.Resampling.BILINEAR)
    ink = ink_map(np.asarray(resized, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.ascontiguousarray(1.0 - ink, dtype=np.float32)).unsqueeze(0)


def _build_digits(load: bool) -> nn.Module:
    model = DigitsUNet()
    if load:
        model.load_state_dict(wsrc.load_bundled(DIGITS_WEIGHTS_FILE, DIGITS_WEIGHTS_SHA256), strict=True)
    return model.eval()


def _digits_factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
    if weights not in (None, "bundled", "random"):
        raise wsrc.WeightsError(f"{name}: weights must be 'bundled' (default) or 'random'")
    random = weights == "random"
    size = (DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE)
    return ModelSpec(
        name=name,
        task=Task.SEGMENTATION,
        build=functools.partial(_build_digits, not random),
        preprocess=digit_scene_tensor,
        postprocess=segmentation_postprocess(DIGITS_CATEGORIES),
        tensor_outputs=segmentation_tensors,
        outputs=segmentation_outputs(size),
        categories=DIGITS_CATEGORIES,
        input_size=size,
        weights=WeightsInfo("random", "random")
        if random
        else WeightsInfo("bundled", DIGITS_WEIGHTS_FILE, DIGITS_WEIGHTS_SHA256),
        image_mode="L",
        family="bundled.digits",
        description="U-Net trained on scenes of scikit-learn digits (models/training/train_digits_segmenter.py)",
        forward=segmentation_forward,
        held_out=heldout.segmentation_scenes,
    )


def _register_all() -> None:
    for key in torchvision.models.list_models(module=torchvision.models.segmentation):
        register(key, Task.SEGMENTATION, torchvision_segmenter(key), family="torchvision.segmentation")
    register("digits_segmenter", Task.SEGMENTATION, _digits_factory, family="bundled.digits")


_register_all()
