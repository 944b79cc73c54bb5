"""A served model's card: what the gateway knows of a model without asking its replica."""

from __future__ import annotations

from deployments import v2
from deployments.schemas import ModelCard, TensorMeta
from models.registry import ModelSpec, Task


def v2_inputs(spec: ModelSpec) -> list[TensorMeta]:
    """The Open Inference Protocol inputs of a model: any ONE of them per request."""
    tensor = TensorMeta(name=v2.TENSOR_INPUT, datatype="FP32", shape=[-1, *spec.input_shape])
    if spec.task == Task.GENERATION:
        return [
            TensorMeta(name=v2.SEED_INPUT, datatype="INT64", shape=[-1]),
            TensorMeta(name=v2.LABEL_INPUT, datatype="INT64", shape=[-1]),
            tensor,
        ]
    if spec.task == Task.VIDEO_CLASSIFICATION:
        return [TensorMeta(name=v2.VIDEO_INPUT, datatype="BYTES", shape=[-1]), tensor]
    return [TensorMeta(name=v2.IMAGE_INPUT, datatype="BYTES", shape=[-1]), tensor]


def model_card(spec: ModelSpec) -> ModelCard:
    """The card of a resolved model spec (name, task, version, labels, tensors)."""
    return ModelCard(
        name=spec.name,
        task=spec.task.value,
        version=spec.weights.version,
        labels=list(spec.categories),
        input_shape=spec.input_shape,
        inputs=v2_inputs(spec),
        outputs=[TensorMeta(name=o.name, datatype=o.datatype, shape=list(o.shape)) for o in spec.outputs],
        explainable=spec.explainable,
    )
