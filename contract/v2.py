"""The Open Inference Protocol's (KServe v2, Triton) wire facts and its binary tensor codec: one
copy for the server (deployments/v2.py) and the Python client (maas/client.py). numpy only.

Malformed data raises ValueError; the server turns it into a 400, the client into an error
naming the response.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

# The JSON header's length in a body that carries binary tensor data.
HEADER_LENGTH = "Inference-Header-Content-Length"
# Input names the models take: encoded images, raw tensors, clips, and a generator's seeds and labels.
IMAGE_INPUT = "image"
TENSOR_INPUT = "input"
VIDEO_INPUT = "video"
SEED_INPUT = "seed"
LABEL_INPUT = "label"

# Protocol datatype -> numpy type code (little-endian, as the binary extension sends them).
DATATYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a protocol datatype other than BYTES."""
    try:
        return np.dtype(DATATYPES[datatype])
    except KeyError:
        raise ValueError(f"unsupported datatype {datatype!r}") from None


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype name of a numpy array (BYTES for anything else)."""
    for name, code in DATATYPES.items():
        if np.dtype(code) == array.dtype.newbyteorder("<"):
            return name
    return "BYTES"


def pack_bytes(items: Sequence[bytes]) -> bytes:
    """A BYTES tensor's binary data: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def unpack_bytes(raw: bytes) -> list[bytes]:
    """The inverse of pack_bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("BYTES tensor data is truncated")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError("BYTES tensor element is truncated")
        items.append(raw[offset : offset + length])
        offset += length
    return items
