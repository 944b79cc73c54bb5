"""Video classification: the bundled moving-digits LSTM and every torchvision video model by name."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.transforms.v2 import functional as tvf

from models import heldout
from models import weights as wsrc
from models.classifiers import (
    build_torchvision,
    classification_outputs,
    classification_postprocess,
    classification_tensors,
    resolve_weights_choice,
)
from models.images import to_mode
from models.registry import ModelSpec, Task, WeightsInfo, register
from models.video_io import uniform_indices

CLIP_LENGTH = 16
INPUT_SIZE = 48
# Clockwise from north, 45 degrees apart; image y grows downward, so "north" moves up the picture.
DIRECTIONS = ("north", "north_east", "east", "south_east", "south", "south_west", "west", "north_west")
WEIGHTS_FILE = "moving_digits_lstm.safetensors"
# Pinned by models/training/train_moving_digits_lstm.py; tests check pin, file and report agree.
WEIGHTS_SHA256 = "2c825777bda73fe77b75491acfb62657c78798b59aefed6d2ab97ac89dc3aa9a"
DEFAULT_TORCHVISION_CLIP_LENGTH = 16


def not_a_clip(img: Image.Image) -> torch.Tensor:
    """The single-image preprocess of a video model: there is none."""
    raise ValueError("video model: send a clip")


def sample_clip(frames: Sequence[Image.Image], length: int, mode: str) -> list[Image.Image]:
    """`length` evenly spaced frames in `mode` (repeating frames of a shorter clip); all must share one size."""
    if not frames:
        raise ValueError("a clip needs at least one frame")
    size = frames[0].size
    for index, frame in enumerate(frames):
        if frame.size != size:
            raise ValueError(
                f"frame {index + 1} is {frame.width}x{frame.height} but the first is {size[0]}x{size[1]}: "
                "all frames of a clip must have the same size"
            )
    return [to_mode(frames[i], mode) for i in uniform_indices(len(frames), length)]


class SpatialSoftmax(nn.Module):
    """Each channel's soft-argmax: (N, K, H, W) maps -> (N, 2K) expected (x, y) in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        n, k, h, w = maps.shape
        weights = torch.softmax(maps.flatten(2) / self.log_temperature.exp(), dim=-1).view(n, k, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=maps.dtype)
        ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=maps.dtype)
        x = (weights.sum(dim=2) * xs).sum(dim=-1)
        y = (weights.sum(dim=3) * ys).sum(dim=-1)
        return torch.cat([x, y], dim=1)


class MovingDigitsLSTM(nn.Module):
    """Per-frame CNN keypoints -> LSTM -> 8 motion directions: (B, T, 1, 48, 48) in, (B, 8) logits out."""

    def __init__(self, num_classes: int = len(DIRECTIONS), keypoints: int = 8, hidden: int = 64) -> None:
        super().__init__()
        # Motion is a change of position, so each frame is summarised by where its features are:
        # a spatial soft-argmax over the last maps (keypoints as in deep spatial autoencoders).
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2, padding=2),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, keypoints, 1),
            SpatialSoftmax(),
        )
        # The LSTM sees each frame's keypoints and their change since the previous frame.
        self.lstm = nn.LSTM(4 * keypoints, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, steps = clips.shape[:2]
        points = self.features(clips.flatten(0, 1)).view(batch, steps, -1)
        moves = torch.diff(points, dim=1, prepend=points[:, :1])
        sequence, _ = self.lstm(torch.cat([points, moves], dim=-1))
        logits: torch.Tensor = self.classifier(sequence[:, -1])
        return logits


def moving_digits_clip(frames: Sequence[Image.Image]) -> torch.Tensor:
    """Decoded frames -> (16, 1, 48, 48) float in [0, 1], ink bright on a dark background.

    Used for training and serving alike: frames are sampled evenly to 16, made greyscale and
    resized to 48x48; a clip on light paper (median above half) is inverted, so the model sees
    one polarity.
    """
    picked = sample_clip(frames, CLIP_LENGTH, "L")
    size = (INPUT_SIZE, INPUT_SIZE)
    resized = [f if f.size == size else f.resize(size, Image.Resampling.BILINEAR) for f in picked]
    arr = np.stack([np.asarray(f, dtype=np.float32) for f in resized]) / 255.0
    if float(np.median(arr)) > 0.5:
        arr = 1.0 - arr
    return torch.from_numpy(arr).unsqueeze(1)


def _build_moving_digits(trained: bool) -> nn.Module:
    model = MovingDigitsLSTM()
    if trained:
        model.load_state_dict(wsrc.load_bundled(WEIGHTS_FILE, WEIGHTS_SHA256), strict=True)
    return model.eval()


def _moving_digits_factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
    choice = weights or "bundled"
    if choice not in ("bundled", "random"):
        raise wsrc.WeightsError(f"{name}: weights must be 'bundled' (default) or 'random'")
    trained = choice == "bundled"
    return ModelSpec(
        name=name,
        task=Task.VIDEO_CLASSIFICATION,
        build=functools.partial(_build_moving_digits, trained),
        preprocess=not_a_clip,
        preprocess_clip=moving_digits_clip,
        clip_length=CLIP_LENGTH,
        postprocess=classification_postprocess(DIRECTIONS),
        tensor_outputs=classification_tensors,
        outputs=classification_outputs(len(DIRECTIONS)),
        categories=DIRECTIONS,
        input_size=(INPUT_SIZE, INPUT_SIZE),
        weights=WeightsInfo("bundled", WEIGHTS_FILE, WEIGHTS_SHA256) if trained else WeightsInfo("random", "random"),
        image_mode="L",
        family="bundled.digits",
        held_out=heldout.moving_digit_clips,
        description=(
            "CNN + LSTM telling which of 8 directions a handwritten digit moves in "
            "(models/training/train_moving_digits_lstm.py)"
        ),
    )


def torchvision_clip_length(weights: WeightsEnum) -> int:
    """Frames per clip the weights were evaluated with (`clip_len` in their docs), at least their minimum."""
    found = re.search(r"clip_len=(\d+)", str(weights.meta.get("_docs", "")))
    length = int(found.group(1)) if found else DEFAULT_TORCHVISION_CLIP_LENGTH
    return max(length, int(weights.meta.get("min_temporal_size", 1)))


def torchvision_clip(transform: Callable[[torch.Tensor], torch.Tensor], length: int) -> Callable[..., torch.Tensor]:
    """Clip preprocess: `length` frames through the weights' video transform, kept (T, C, H, W)."""

    def preprocess_clip(frames: Sequence[Image.Image]) -> torch.Tensor:
        video = torch.stack([tvf.pil_to_tensor(f) for f in sample_clip(frames, length, "RGB")])
        # torchvision's video transforms take (T, C, H, W) uint8 and return (C, T, H, W) float.
        return transform(video).permute(1, 0, 2, 3)

    return preprocess_clip


def channels_first_forward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[Any]:
    """Batch forward of torchvision video models: (T, C, H, W) items -> one (B, C, T, H, W) pass."""
    batch = torch.stack(list(inputs)).permute(0, 2, 1, 3, 4)
    return list(module(batch).unbind(0))


def torchvision_video(key: str) -> Callable[[str, str | None, str | None], ModelSpec]:
    """Spec factory for the torchvision video classifier `key`."""

    def factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
        choice = resolve_weights_choice(key, name, weights, sha256)
        categories = tuple(choice.meta.meta["categories"])
        transform = choice.meta.transforms()
        crop = int(transform.crop_size[0])
        length = torchvision_clip_length(choice.meta)
        return ModelSpec(
            name=name,
            task=Task.VIDEO_CLASSIFICATION,
            build=functools.partial(build_torchvision, key, choice),
            preprocess=not_a_clip,
            preprocess_clip=torchvision_clip(transform, length),
            clip_length=length,
            forward=channels_first_forward,
            postprocess=classification_postprocess(categories),
            tensor_outputs=classification_tensors,
            outputs=classification_outputs(len(categories)),
            categories=categories,
            input_size=(crop, crop),
            weights=choice.info,
            family="torchvision.video",
            description=f"torchvision {key} ({choice.meta}), {length}-frame clips",
        )

    return factory


def _register_all() -> None:
    register("moving_digits_lstm", Task.VIDEO_CLASSIFICATION, _moving_digits_factory, family="bundled.digits")
    for key in torchvision.models.list_models(module=torchvision.models.video):
        register(key, Task.VIDEO_CLASSIFICATION, torchvision_video(key), family="torchvision.video")


_register_all()
