"""Open Inference Protocol v2, driven by a real third-party client (tritonclient) and by hand."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton

from models.images import decode_image
from models.registry import get_spec


@pytest.fixture
def triton_client(base_url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(base_url.removeprefix("http://"), network_timeout=60.0)


def test_tritonclient_reads_server_and_model_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("digits_cnn")
    server = triton_client.get_server_metadata()
    assert server["name"] == "vision-maas"
    assert "binary_tensor_data" in server["extensions"]
    meta = triton_client.get_model_metadata("digits_cnn")
    assert meta["name"] == "digits_cnn"
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "input": "FP32"}
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]} in meta["outputs"]
    config = triton_client.get_model_config("digits_cnn")
    assert config["max_batch_size"] == 16


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_encoded_images(
    triton_client: triton.InferenceServerClient, digit_pngs: list[tuple[bytes, int]], binary: bool
) -> None:
    chosen = digit_pngs[:3]
    payload = [png if binary else base64.b64encode(png) for png, _ in chosen]
    image = triton.InferInput("image", [len(chosen)], "BYTES")
    image.set_data_from_numpy(np.array(payload, dtype=np.object_), binary_data=binary)
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = triton_client.infer("digits_cnn", [image], outputs=wanted)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 10)
    assert probs.argmax(axis=1).tolist() == [label for _, label in chosen]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_tritonclient_infers_preprocessed_tensor_equal_to_direct_call(
    triton_client: triton.InferenceServerClient, digit_pngs: list[tuple[bytes, int]]
) -> None:
    spec = get_spec("digits_cnn")
    batch = torch.stack([spec.preprocess(decode_image(png, spec.image_mode)) for png, _ in digit_pngs[:4]])
    with torch.inference_mode():
        expected = spec.build()(batch).numpy()
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch.numpy(), binary_data=True)
    result = triton_client.infer("digits_cnn", [tensor], outputs=[triton.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-4)


def test_tritonclient_classification_extension_returns_top_k(
    triton_client: triton.InferenceServerClient, digit_pngs: list[tuple[bytes, int]]
) -> None:
    png, label = digit_pngs[5]
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=np.object_))
    wanted = [triton.InferRequestedOutput("probabilities", class_count=3)]
    result = triton_client.infer("digits_cnn", [image], outputs=wanted)
    top = result.as_numpy("probabilities")
    assert top.shape == (1, 3)
    score, index, name = top[0, 0].decode().split(":")
    assert (int(index), name) == (label, str(label))
    assert 0.0 < float(score) <= 1.0


def test_v2_json_infer_round_trips_by_hand(client: httpx.Client, digit_pngs: list[tuple[bytes, int]]) -> None:
    png, label = digit_pngs[1]
    body = {
        "id": "req-1",
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]}],
    }
    response = client.post("/v2/models/digits_cnn/infer", json=body)
    assert response.status_code == 200
    out = response.json()
    assert out["id"] == "req-1"
    assert out["model_name"] == "digits_cnn"
    probs = next(o for o in out["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [1, 10]
    assert int(np.argmax(probs["data"])) == label


def test_v2_version_path_must_name_the_served_version(client: httpx.Client) -> None:
    version = client.get("/v2/models/digits_cnn").json()["versions"][0]
    assert client.get(f"/v2/models/digits_cnn/versions/{version}").status_code == 200
    response = client.get("/v2/models/digits_cnn/versions/999")
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (json.dumps({"inputs": []}).encode(), 400),
        (
            json.dumps(
                {"inputs": [{"name": "input", "shape": [1, 1, 5, 5], "datatype": "FP32", "data": [0.0] * 25}]}
            ).encode(),
            422,
        ),
        (json.dumps({"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [0.0]}]}).encode(), 400),
        (
            json.dumps({"inputs": [{"name": "other", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]}).encode(),
            400,
        ),
        (
            json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]}).encode(),
            415,
        ),
    ],
)
def test_v2_errors_use_the_protocol_error_shape(client: httpx.Client, body: bytes, status: int) -> None:
    response = client.post("/v2/models/digits_cnn/infer", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error"}
    assert isinstance(error["error"], str)


def test_v2_unknown_model_is_404(client: httpx.Client) -> None:
    response = client.get("/v2/models/nope")
    assert response.status_code == 404
    assert isinstance(response.json()["error"], str)
