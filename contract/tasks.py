"""Tasks: what a model does, which decides its routes and the shape of its answers."""

from __future__ import annotations

import enum
import re


class Task(enum.StrEnum):
    """What a model does; decides its routes and the shape of its answers."""

    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    GENERATION = "generation"
    DENOISING = "denoising"
    VIDEO_CLASSIFICATION = "video_classification"
    EXPLANATION = "explanation"


# Tasks whose models take still images on :predict (and in :annotate); video models take clips,
# generators take seeds.
IMAGE_TASKS = frozenset({Task.CLASSIFICATION, Task.DETECTION, Task.SEGMENTATION, Task.DENOISING})

# A served or registered model's name: a URL segment and a Serve deployment name.
MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
