"""The Open Inference Protocol codec, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest

from contract.v2 import pack_bytes
from deployments import v2
from deployments.errors import BadRequest


def _binary_request(inputs: list[dict[str, object]], binary: bytes) -> tuple[bytes, str]:
    head = json.dumps({"inputs": inputs}).encode()
    return head + binary, str(len(head))


def test_bytes_tensor_round_trips() -> None:
    items = [b"", b"abc", bytes(range(256))]
    assert v2.deserialize_bytes(pack_bytes(items)) == items


def test_truncated_bytes_tensor_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        v2.deserialize_bytes(pack_bytes([b"abcdef"])[:-1])


def test_binary_fp32_input_decodes_with_its_shape() -> None:
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    body, length = _binary_request(
        [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 48}}],
        array.tobytes(),
    )
    request, rest = v2.split_body(body, length)
    decoded = v2.decode_inputs(request, rest)["input"]
    assert isinstance(decoded, np.ndarray)
    np.testing.assert_array_equal(decoded, array)


def test_binary_size_mismatch_is_a_bad_request() -> None:
    body, length = _binary_request(
        [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 8}}], b"\x00" * 8
    )
    request, rest = v2.split_body(body, length)
    with pytest.raises(BadRequest, match="do not fit"):
        v2.decode_inputs(request, rest)


def test_header_length_outside_the_body_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        v2.split_body(b"{}", "99")


def test_binary_output_is_appended_after_the_json_header() -> None:
    request = v2.InferRequest.model_validate(
        {
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}],
            "parameters": {"binary_data_output": True},
        }
    )
    probs = np.array([[0.1, 0.9]], dtype=np.float32)
    body, headers = v2.encode_response("m", "1", request, {"probabilities": probs}, ["a", "b"])
    n = int(headers[v2.HEADER_LENGTH])
    head = json.loads(body[:n])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    np.testing.assert_array_equal(np.frombuffer(body[n:], dtype=np.float32), probs.ravel())


def test_classification_extension_formats_score_index_label() -> None:
    rows = v2.classification_output(np.array([[0.2, 0.7, 0.1]], dtype=np.float32), 2, ["cat", "dog", "eel"])
    assert rows == [[b"0.700000:1:dog", b"0.200000:0:cat"]]


def test_request_from_kserve_sdk_decodes_when_it_names_its_model() -> None:
    # KServe's SDK adds `model_name` (not in the protocol) to every request body it sends.
    tensor = InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([b"abc", b"de"], dtype=np.object_), binary_data=True)
    body, length = InferRequest("digits_cnn", [tensor]).to_rest()
    assert isinstance(body, bytes)
    request, rest = v2.split_body(body, str(length))
    assert request.model_name == "digits_cnn"
    assert v2.decode_inputs(request, rest) == {"image": [b"abc", b"de"]}
