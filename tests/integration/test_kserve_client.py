"""Open Inference Protocol v2, driven by KServe's own Python SDK (InferenceRESTClient) against /v2.

The SDK's REST client is async (httpx.AsyncClient): each test runs it under its own
asyncio.run, so no event loop outlives a test (the suite's Playwright fixture keeps one of its
own per module). The client has no metadata calls; metadata is read with httpx and parsed with
the SDK's own protocol models instead.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import numpy as np
import pytest
import torch
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ModelReadyResponse, ServerMetadataResponse

from models.images import decode_image
from models.registry import get_spec

MODEL = "digits_cnn"
T = TypeVar("T")


def with_kserve(call: Callable[[InferenceRESTClient], Awaitable[T]]) -> T:
    """`call` with a fresh v2 client, on an event loop of its own."""

    async def main() -> T:
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as kserve:
            return await call(kserve)

    return asyncio.run(main())


def infer(base_url: str, request: InferRequest, model: str = MODEL) -> InferResponse:
    response = with_kserve(lambda kserve: kserve.infer(base_url, request, model_name=model))
    assert isinstance(response, InferResponse)
    return response


def output(response: InferResponse, name: str) -> np.ndarray:
    found = response.get_output_by_name(name)
    assert found is not None, [o.name for o in response.outputs]
    return found.as_numpy()


# ---- health and metadata ----------------------------------------------------------------


def test_kserve_client_sees_server_live_and_ready(base_url: str) -> None:
    assert with_kserve(lambda kserve: kserve.is_server_live(base_url)) is True
    assert with_kserve(lambda kserve: kserve.is_server_ready(base_url)) is True


def test_kserve_client_sees_model_ready_and_unknown_model_not_ready(base_url: str) -> None:
    assert with_kserve(lambda kserve: kserve.is_model_ready(base_url, MODEL)) is True
    # The protocol answers an unknown model with a 4xx, which the SDK reports as not ready.
    assert with_kserve(lambda kserve: kserve.is_model_ready(base_url, "no_such_model")) is False


def test_metadata_parses_as_kserve_protocol_models_when_read(client: httpx.Client) -> None:
    # Each body must be exactly the SDK's protocol model: no field missing, renamed or extra.
    server_body = client.get("/v2").json()
    server = ServerMetadataResponse.model_validate(server_body)
    assert server.model_dump() == server_body
    assert server.name == "vision-maas"
    assert {"binary_tensor_data", "classification"} <= set(server.extensions)

    model_body = client.get(f"/v2/models/{MODEL}").json()
    model = ModelMetadataResponse.model_validate(model_body)
    assert model.model_dump() == model_body
    assert model.name == MODEL
    assert {i.name: (i.datatype, i.shape) for i in model.inputs} == {
        "image": ("BYTES", [-1]),
        "input": ("FP32", [-1, 1, 28, 28]),
    }
    assert ("probabilities", "FP32", [-1, 10]) in [(o.name, o.datatype, o.shape) for o in model.outputs]

    ready_body = client.get(f"/v2/models/{MODEL}/ready").json()
    assert ModelReadyResponse.model_validate(ready_body).model_dump() == ready_body == {"name": MODEL, "ready": True}


# ---- inference ----------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_kserve_client_classifies_encoded_digits_when_sent_as_bytes(
    base_url: str, digit_pngs: list[tuple[bytes, int]], binary: bool
) -> None:
    chosen = digit_pngs[:6]
    # In JSON, BYTES elements carry encoded images base64-encoded (they are not UTF-8 text).
    payload = [png if binary else base64.b64encode(png) for png, _ in chosen]
    image = InferInput("image", [len(chosen)], "BYTES")
    image.set_data_from_numpy(np.array(payload, dtype=np.object_), binary_data=binary)
    wanted = [RequestedOutput("probabilities", {"binary_data": binary})]
    request = InferRequest(MODEL, [image], request_id="kserve-1", request_outputs=wanted)

    response = infer(base_url, request)

    assert (response.model_name, response.id) == (MODEL, "kserve-1")
    assert [o.name for o in response.outputs] == ["probabilities"]
    probs = output(response, "probabilities")
    assert probs.shape == (6, 10)
    assert probs.argmax(axis=1).tolist() == [label for _, label in chosen]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_kserve_client_gets_logits_equal_to_direct_call_when_sending_a_raw_tensor(
    base_url: str, digit_pngs: list[tuple[bytes, int]]
) -> None:
    spec = get_spec(MODEL)
    batch = torch.stack([spec.preprocess(decode_image(png, spec.image_mode)) for png, _ in digit_pngs[:4]])
    with torch.inference_mode():
        expected = spec.build()(batch).numpy()
    tensor = InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch.numpy(), binary_data=True)
    request = InferRequest(MODEL, [tensor], request_outputs=[RequestedOutput("logits")])

    logits = output(infer(base_url, request), "logits")

    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert logits.argmax(axis=1).tolist() == [label for _, label in digit_pngs[:4]]


def test_kserve_client_reads_top_k_when_asking_for_classification(
    base_url: str, digit_pngs: list[tuple[bytes, int]]
) -> None:
    png, label = digit_pngs[5]
    image = InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=np.object_), binary_data=True)
    request = InferRequest(MODEL, [image], request_outputs=[RequestedOutput("probabilities", {"classification": 3})])

    top = output(infer(base_url, request), "probabilities")

    assert top.shape == (1, 3)
    entry = top[0, 0]
    score, index, name = (entry.decode() if isinstance(entry, bytes) else str(entry)).split(":")
    assert (int(index), name) == (label, str(label))
    assert 0.0 < float(score) <= 1.0


# ---- errors -------------------------------------------------------------------------------


def _one_image(png: bytes, name: str = "image") -> InferRequest:
    image = InferInput(name, [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=np.object_), binary_data=True)
    return InferRequest(MODEL, [image])


def test_kserve_client_raises_404_when_the_model_is_unknown(base_url: str, digit_pngs: list[tuple[bytes, int]]) -> None:
    with pytest.raises(httpx.HTTPStatusError) as raised:
        infer(base_url, _one_image(digit_pngs[0][0]), model="no_such_model")
    assert raised.value.response.status_code == 404
    error = raised.value.response.json()
    assert set(error) == {"error"}
    assert isinstance(error["error"], str)
    # The SDK carries the protocol's error message into its exception.
    assert error["error"] in str(raised.value)


def test_kserve_client_raises_400_when_the_input_is_not_the_models(
    base_url: str, digit_pngs: list[tuple[bytes, int]]
) -> None:
    with pytest.raises(httpx.HTTPStatusError) as raised:
        infer(base_url, _one_image(digit_pngs[0][0], name="pixels"))
    assert raised.value.response.status_code == 400
    assert "send exactly one of the inputs" in raised.value.response.json()["error"]
