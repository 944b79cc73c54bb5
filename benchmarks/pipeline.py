"""One model's whole pipeline in process: decode, preprocess, batched forward, postprocess.

The raw baseline times it in a tight loop (the ceiling a server can reach on the same cores);
the peer servers wrap the same object, so every server runs the same model code on the same
images and only the serving machinery differs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Literal

import torch
from PIL import Image

from contract.params import PARAMS_BY_TASK
from models.backends import apply_backend
from models.images import decode_image
from models.registry import Item, ModelSpec, get_spec

# The benchmark models: torchvision's with random weights (the same compute as pretrained),
# and the bundled digits classifier with its trained weights.
MODELS = ("resnet18", "resnet50", "mobilenet_v3_large", "digits_cnn")
Decoder = Literal["server", "pil"]


def weights_for(model: str) -> str | None:
    """The weights a benchmark model runs with: bundled ones where they exist, else random."""
    return None if model.startswith("digits_") else "random"


class Pipeline:
    """decode + preprocess + forward + postprocess of `model`, as a server would run it."""

    def __init__(self, model: str, decoder: Decoder = "server", backend: str = "eager") -> None:
        self.spec: ModelSpec = get_spec(model, weights_for(model))
        # Eager PyTorch, or an optional backend as a replica configured with it runs (benchmarks/backends.py).
        self.module = apply_backend(self.spec.build().eval(), self.spec, backend)
        # "server": vision-maas' own hardened decode (limits, EXIF rotation); "pil": what a
        # hand-written server does, Image.open(...).convert(mode).
        self.decoder = decoder
        self.params = PARAMS_BY_TASK[self.spec.task]()

    def decode(self, data: bytes) -> Image.Image:
        """Image bytes -> a decoded image in the model's mode."""
        if self.decoder == "server":
            return decode_image(data, self.spec.image_mode)
        return Image.open(io.BytesIO(data)).convert(self.spec.image_mode)

    def prepare(self, data: bytes) -> tuple[torch.Tensor, Item[Any]]:
        """One image's model input, and its parameters (the task's defaults) and size for postprocess."""
        img = self.decode(data)
        return self.spec.preprocess(img), Item(self.params, (img.width, img.height))

    def run(self, prepared: Sequence[tuple[torch.Tensor, Item[Any]]]) -> list[dict[str, Any]]:
        """One batched forward pass and postprocess: one JSON-able result per input."""
        with torch.inference_mode():
            outputs = self.spec.forward(self.module, [tensor for tensor, _ in prepared])
        answers = self.spec.postprocess(outputs, [item for _, item in prepared])
        return [answer.model_dump(mode="json", exclude_none=True) for answer in answers]

    def __call__(self, images: Sequence[bytes]) -> list[dict[str, Any]]:
        """The whole pipeline on a batch of encoded images."""
        return self.run([self.prepare(data) for data in images])
