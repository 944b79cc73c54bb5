"""The TorchServe handler of the TorchServe peer: the shared Pipeline on the batch TorchServe hands it.

torchserve_server.py archives this file into the .mar; TorchServe's Python worker imports it from
the extracted archive, and it imports `benchmarks` from the editable install of the worker's Python.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.pipeline import Pipeline


# TorchServe instantiates the one class defined here (a module-level `handle` would be taken instead).
class VisionHandler:
    """initialize() builds the pipeline once per worker; handle() runs one batched forward per batch."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None

    def initialize(self, context: Any) -> None:
        # The model name and torch threads come from the archive's model-config.yaml `handler` section.
        config = (context.model_yaml_config or {}).get("handler", {})
        torch.set_num_threads(int(config.get("threads", 1)))
        self.pipeline = Pipeline(str(config.get("model", context.model_name)), decoder="pil")

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        assert self.pipeline is not None, "initialize() runs first"
        # A raw request body arrives as "body"; a multipart upload's file as "data".
        images = [bytes(row.get("data") or row.get("body") or b"") for row in data]
        results = self.pipeline.run([self.pipeline.prepare(image) for image in images])
        return [{"predictions": [result]} for result in results]
