"""Open Inference Protocol (KServe v2 / Triton) request and response codec and schemas, with the
binary tensor data and classification extensions. numpy only: no torch in the ingress.

Written by hand because no maintained library exposes this codec for a FastAPI app of its
own (KServe's lives inside its model server; tritonclient's is client-side).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.answers import DIGITS_VERSION_EXAMPLE, examples
from contract.v2 import (
    HEADER_LENGTH,
    IMAGE_INPUT,
    LABEL_INPUT,
    SEED_INPUT,
    TENSOR_INPUT,
    VIDEO_INPUT,
    datatype_of,
    numpy_dtype,
    pack_bytes,
    unpack_bytes,
)
from deployments.errors import BadRequest, InvalidParameters, describe_validation_error
from deployments.schemas import TensorMeta

__all__ = ["HEADER_LENGTH", "IMAGE_INPUT", "LABEL_INPUT", "SEED_INPUT", "TENSOR_INPUT", "VIDEO_INPUT", "datatype_of"]


class InferInput(BaseModel):
    """One input tensor of an inference request."""

    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    """An output the client asks for, with its per-output parameters."""

    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """The JSON part of an inference request."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    # Not in the protocol, but KServe's Python SDK sends it with every request; like KServe's
    # own server, the model is the one the URL names.
    model_name: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


def split_body(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """Split a (possibly binary-extension) body into the parsed JSON header and the binary rest."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {n} is outside the body of {len(body)} bytes")
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        raw = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    try:
        return InferRequest.model_validate(raw), rest
    except ValidationError as exc:
        raise BadRequest(f"invalid inference request: {describe_validation_error(exc)}") from None


def _count(shape: Sequence[int]) -> int:
    if any(d < 0 for d in shape):
        raise BadRequest(f"input shape {list(shape)} has a negative dimension")
    return int(np.prod(shape)) if shape else 1


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """A BYTES tensor's elements from its binary data; malformed data is a 400."""
    try:
        return unpack_bytes(raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def decode_inputs(request: InferRequest, binary: bytes) -> dict[str, np.ndarray | list[bytes]]:
    """Each input as numpy (numeric) or a list of bytes (BYTES), by name."""
    decoded: dict[str, np.ndarray | list[bytes]] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in decoded:
            raise BadRequest(f"input {tensor.name!r} given twice")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"input {tensor.name!r}: binary_data_size exceeds the binary data")
            chunk, offset = binary[offset : offset + size], offset + size
            decoded[tensor.name] = _from_binary(tensor, chunk)
        elif tensor.data is not None:
            decoded[tensor.name] = _from_json(tensor)
        else:
            raise BadRequest(f"input {tensor.name!r} has neither data nor binary_data_size")
    if offset != len(binary):
        raise BadRequest("binary data is longer than the inputs' binary_data_size")
    return decoded


def _from_binary(tensor: InferInput, chunk: bytes) -> np.ndarray | list[bytes]:
    if tensor.datatype == "BYTES":
        items = deserialize_bytes(chunk)
        _check_count(tensor, len(items))
        return items
    dtype = _dtype(tensor)
    if len(chunk) != _count(tensor.shape) * dtype.itemsize:
        raise BadRequest(f"input {tensor.name!r}: {len(chunk)} bytes do not fit shape {tensor.shape}")
    return np.frombuffer(chunk, dtype=dtype).reshape(tensor.shape)


def _from_json(tensor: InferInput) -> np.ndarray | list[bytes]:
    flat = list(_flatten(tensor.data or []))
    _check_count(tensor, len(flat))
    if tensor.datatype == "BYTES":
        # Encoded images are not text: in JSON, BYTES elements carry them base64-encoded.
        try:
            return [base64.b64decode(item, validate=True) for item in flat]
        except (binascii.Error, TypeError, ValueError):
            raise BadRequest(f"input {tensor.name!r}: BYTES elements must be base64 strings in JSON") from None
    try:
        return np.asarray(flat, dtype=_dtype(tensor)).reshape(tensor.shape)
    except (TypeError, ValueError):
        raise BadRequest(f"input {tensor.name!r}: data are not {tensor.datatype} values") from None


def _flatten(data: list[Any]) -> Any:
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _check_count(tensor: InferInput, count: int) -> None:
    if count != _count(tensor.shape):
        raise BadRequest(f"input {tensor.name!r}: {count} elements do not fit shape {tensor.shape}")


def _dtype(tensor: InferInput) -> np.dtype[Any]:
    try:
        return numpy_dtype(tensor.datatype)
    except ValueError:
        raise BadRequest(f"input {tensor.name!r}: unsupported datatype {tensor.datatype!r}") from None


def classification_output(scores: np.ndarray, k: int, labels: Sequence[str]) -> list[list[bytes]]:
    """Triton's classification extension: per row, the top k as `score:index:label`."""
    k = max(1, min(k, scores.shape[1]))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[f"{scores[r, i]:f}:{i}:{labels[i]}".encode() for i in row] for r, row in enumerate(top)]


def encode_response(
    model: str,
    version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
    labels: Sequence[str],
) -> tuple[bytes, dict[str, str]]:
    """Response body and headers; binary extension where the request asks for it."""
    wanted = request.outputs or [RequestedOutput(name=name) for name in outputs]
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for want in wanted:
        if want.name not in outputs:
            raise BadRequest(f"unknown output {want.name!r}; this model has {', '.join(outputs)}")
        params = want.parameters or {}
        array = outputs[want.name]
        k = params.get("classification")
        if k is not None:
            if not isinstance(k, int) or k < 1:
                raise InvalidParameters("classification must be a positive integer")
            rows = classification_output(array, k, labels)
            entry: dict[str, Any] = {"name": want.name, "datatype": "BYTES", "shape": [len(rows), len(rows[0])]}
            flat_bytes = [item for row in rows for item in row]
            raw = pack_bytes(flat_bytes)
            json_data: list[Any] = [item.decode() for item in flat_bytes]
        else:
            entry = {"name": want.name, "datatype": datatype_of(array), "shape": list(array.shape)}
            raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            json_data = array.ravel().tolist()
        if params.get("binary_data", binary_default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = json_data
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    head = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }


# ---- Open Inference Protocol v2 responses (the shapes KServe and Triton define) ----------


class V2Error(BaseModel):
    """Open Inference Protocol errors: a message only."""

    model_config = examples({"error": "model 'nope' is not served; see GET /v1/models"})
    error: str


class V2ServerMetadata(BaseModel):
    """Server metadata, with the protocol extensions it supports."""

    model_config = examples(
        {"name": "vision-maas", "version": "0.1.0", "extensions": ["binary_tensor_data", "classification"]}
    )
    name: str
    version: str
    extensions: list[str]


class V2ServerLive(BaseModel):
    """Server liveness."""

    model_config = examples({"live": True})
    live: bool


class V2ServerReady(BaseModel):
    """Server readiness: ready only when every model answers (503 otherwise)."""

    model_config = examples({"ready": True})
    ready: bool


class V2ModelMetadata(BaseModel):
    """A model's tensors: a request sends any ONE of its inputs."""

    model_config = examples(
        {
            "name": "digits_cnn",
            "versions": [DIGITS_VERSION_EXAMPLE],
            "platform": "pytorch",
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
            ],
        }
    )
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta] = Field(description="`image`: encoded images (BYTES); `input`: preprocessed tensors.")
    outputs: list[TensorMeta]


class V2ModelReady(BaseModel):
    """A model's readiness (503 while it is not ready)."""

    model_config = examples({"name": "digits_cnn", "ready": True})
    name: str
    ready: bool


class TritonTensorConfig(BaseModel):
    """A tensor of Triton's model configuration; `dims` leave out the batch dimension."""

    name: str
    data_type: str
    dims: list[int]


class V2ModelConfig(BaseModel):
    """Triton's model configuration, as tritonclient and perf_analyzer read it."""

    model_config = examples(
        {
            "name": "digits_cnn",
            "platform": "pytorch",
            "max_batch_size": 16,
            "input": [
                {"name": "image", "data_type": "TYPE_STRING", "dims": [1]},
                {"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]},
            ],
            "output": [
                {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
                {"name": "logits", "data_type": "TYPE_FP32", "dims": [10]},
            ],
        }
    )
    name: str
    platform: str
    max_batch_size: int
    input: list[TritonTensorConfig]
    output: list[TritonTensorConfig]


class BatchStats(BaseModel):
    """Batches of one size executed by the replica, and their total compute time."""

    batch_size: int
    count: int
    seconds: float


class ModelStats(BaseModel):
    name: str
    version: str
    inference_count: int = Field(description="Inputs inferred.")
    execution_count: int = Field(description="Batches executed.")
    batch_stats: list[BatchStats]


class V2ModelStats(BaseModel):
    """Triton's statistics extension, for the replica that answered."""

    model_config = examples(
        {
            "model_stats": [
                {
                    "name": "digits_cnn",
                    "version": DIGITS_VERSION_EXAMPLE,
                    "inference_count": 40,
                    "execution_count": 3,
                    "batch_stats": [
                        {"batch_size": 8, "count": 2, "seconds": 0.0121},
                        {"batch_size": 24, "count": 1, "seconds": 0.0183},
                    ],
                }
            ]
        }
    )
    model_stats: list[ModelStats]


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size` when the tensor's bytes follow the JSON (binary tensor data extension)."
    )
    data: list[Any] | None = Field(None, description="Row-major values; absent when sent as binary data.")


class V2InferResponse(BaseModel):
    """Inference outputs (JSON; with binary outputs, this JSON is the header of the body)."""

    model_config = examples(
        {
            "model_name": "digits_cnn",
            "model_version": DIGITS_VERSION_EXAMPLE,
            "id": "req-1",
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [1, 10],
                    "data": [0.001, 0.002, 0.004, 0.001, 0.003, 0.001, 0.0, 0.981, 0.004, 0.003],
                }
            ],
        }
    )
    model_name: str
    model_version: str
    id: str | None = Field(None, description="The request's `id`, when it has one.")
    outputs: list[V2OutputTensor]
