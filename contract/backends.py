"""Inference backends a model can run on (models.backends builds them)."""

from __future__ import annotations

from typing import Literal, get_args

Backend = Literal["eager", "channels_last", "onnx", "int8"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
