"""A model family's postprocess as a replica runs it, for the unit tests: the task's parameters
validated once (as the API does), each item's original size, and the answers as the server sends
them (JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contract.params import PARAMS_BY_TASK
from models.registry import Item, ModelSpec


def answers(
    spec: ModelSpec, outputs: Sequence[Any], sizes: Sequence[tuple[int, int] | None], **params: Any
) -> list[dict[str, Any]]:
    """`spec.postprocess` of `outputs`, one item per size, every item with `params`."""
    kind = PARAMS_BY_TASK.get(spec.task)
    validated = kind.model_validate(params) if kind is not None else None
    found = spec.postprocess(outputs, [Item(validated, size) for size in sizes])
    return [answer.model_dump(mode="json", exclude_none=True) for answer in found]
