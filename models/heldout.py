"""Held-out data sets of the bundled models: data their training never saw, with ground truth.

Each bundled family names its set in its spec (`ModelSpec.held_out`); `models.evaluate` scores
any of them, locally or through the API. Training-data modules import scikit-learn, so they
are imported only when a set is made.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from contract.tasks import Task
from models import metrics


@dataclass
class Dataset:
    """Encoded inputs and their ground truth, in one order."""

    task: Task
    inputs: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # classification
    boxes: list[metrics.Detections] = field(default_factory=list)  # detection
    masks: list[np.ndarray] = field(default_factory=list)  # segmentation
    names: list[str] = field(default_factory=list)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def digits(limit: int | None = None) -> Dataset:
    """The held-out split of scikit-learn's digits, rendered as the served pictures."""
    from models.training.data import digits_split, render_digit

    _, _, x_test, y_test = digits_split()
    count = len(x_test) if limit is None else min(limit, len(x_test))
    return Dataset(
        Task.CLASSIFICATION,
        inputs=[png(render_digit(x_test[i])) for i in range(count)],
        labels=[int(y) for y in y_test[:count]],
        names=[f"digit_{i}" for i in range(count)],
    )


def digit_scenes(task: Task, limit: int | None = None) -> Dataset:
    """Scenes of held-out digits with their boxes and masks (300 unless `limit`)."""
    from models.training.scenes import digit_scenes as make

    scenes = make("test", limit or 300)
    data = Dataset(task, names=[f"scene_{i}" for i in range(len(scenes))])
    for scene in scenes:
        data.inputs.append(png(scene.image))
        data.boxes.append(metrics.Detections(scene.boxes, scene.labels))
        data.masks.append(scene.mask)
    return data


def detection_scenes(limit: int | None = None) -> Dataset:
    return digit_scenes(Task.DETECTION, limit)


def segmentation_scenes(limit: int | None = None) -> Dataset:
    return digit_scenes(Task.SEGMENTATION, limit)


def moving_digit_clips(limit: int | None = None) -> Dataset:
    """Clips of held-out digits moving in one of 8 directions, as GIFs (400 unless `limit`)."""
    from models.training.moving_digits import clip_frames, make_clips
    from models.video_io import encode_clip

    clips, directions, _ = make_clips("test", limit or 400)
    return Dataset(
        Task.VIDEO_CLASSIFICATION,
        inputs=[encode_clip(clip_frames(clip), "gif") for clip in clips],
        labels=[int(d) for d in directions],
        names=[f"clip_{i}" for i in range(len(clips))],
    )
