"""The Open Inference Protocol v2 routes (KServe v2, Triton's HTTP API): server and model
metadata, readiness, Triton's model config and statistics, and inference on JSON or binary tensors."""

import asyncio

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from deployments import inputs, openapi, v2
from deployments.errors import BadRequest, PayloadTooLarge
from deployments.gateway import Gateway
from deployments.rest.common import CREDENTIAL, INFER_ERRORS, SERVER_NAME, SERVER_VERSION

# Each shared by a route and its /versions/{version} twin.
V2_MODEL_RESPONSES = openapi.v2_errors(401, 403, 404, 429, 503)
V2_INFER_RESPONSES = {**openapi.v2_errors(*INFER_ERRORS), 200: openapi.V2_BINARY_INFER_RESPONSE}


def _triton_type(datatype: str) -> str:
    """Triton model-config type of an Open Inference Protocol datatype (BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def router(gateway: Gateway) -> APIRouter:
    """The v2 routes over `gateway`."""
    api = APIRouter()
    limits = gateway.limits

    @api.get("/v2", response_model=v2.V2ServerMetadata, responses=openapi.v2_errors(), summary="v2 server metadata")
    async def v2_server() -> Response:
        """Server name, version and the protocol extensions it supports."""
        return JSONResponse(
            {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data", "classification"]}
        )

    @api.get(
        "/v2/health/live",
        response_model=v2.V2ServerLive,
        responses=openapi.v2_errors(),
        summary="v2 server liveness",
    )
    async def v2_live() -> Response:
        """Live while the ingress runs."""
        return JSONResponse({"live": True})

    @api.get(
        "/v2/health/ready",
        response_model=v2.V2ServerReady,
        responses={**openapi.v2_errors(), 503: openapi.not_ready_response(v2.V2ServerReady)},
        summary="v2 server readiness: every model answers",
    )
    async def v2_ready() -> Response:
        """Ready when every model answers within 5 s; 503 with `ready: false` otherwise."""
        ready = await asyncio.gather(*(gateway.model_ready(name) for name in gateway.cards))
        return JSONResponse({"ready": all(ready)}, status_code=200 if all(ready) else 503)

    @api.get(
        "/v2/models/{model}",
        response_model=v2.V2ModelMetadata,
        responses=V2_MODEL_RESPONSES,
        summary="v2 model metadata",
    )
    @api.get(
        "/v2/models/{model}/versions/{version}",
        response_model=v2.V2ModelMetadata,
        responses=V2_MODEL_RESPONSES,
        summary="v2 model metadata of a version",
    )
    async def v2_model(model: str, version: str | None = None, key: str | None = CREDENTIAL) -> Response:
        """The model's versions and tensors: a request sends any one of its inputs."""
        card, _ = await gateway.gate(model, key, version)
        return JSONResponse(
            {
                "name": card.name,
                "versions": [card.version],
                "platform": "pytorch",
                "inputs": [i.model_dump() for i in card.inputs],
                "outputs": [o.model_dump() for o in card.outputs],
            }
        )

    @api.get(
        "/v2/models/{model}/ready",
        response_model=v2.V2ModelReady,
        responses=openapi.V2_MODEL_READY_RESPONSES,
        summary="v2 model readiness",
    )
    @api.get(
        "/v2/models/{model}/versions/{version}/ready",
        response_model=v2.V2ModelReady,
        responses=openapi.V2_MODEL_READY_RESPONSES,
        summary="v2 model readiness of a version",
    )
    async def v2_model_ready(model: str, version: str | None = None, key: str | None = CREDENTIAL) -> Response:
        """Ready when the model answers within 5 s; 503 with `ready: false` otherwise."""
        card, _ = await gateway.gate(model, key, version)
        ready = await gateway.model_ready(card.name)
        return JSONResponse({"name": card.name, "ready": ready}, status_code=200 if ready else 503)

    @api.get(
        "/v2/models/{model}/config",
        response_model=v2.V2ModelConfig,
        responses=openapi.v2_errors(401, 403, 404, 408, 429, 503),
        summary="Triton model configuration",
    )
    async def v2_model_config(model: str, key: str | None = CREDENTIAL) -> Response:
        """Triton's model configuration (batch size read live from a replica), for tritonclient and perf_analyzer."""
        card, _ = await gateway.gate(model, key)
        meta = await gateway.call(model, "metadata")
        return JSONResponse(
            {
                "name": card.name,
                "platform": "pytorch",
                "max_batch_size": meta["batching"]["max_batch_size"],
                "input": [
                    {"name": i.name, "data_type": _triton_type(i.datatype), "dims": list(i.shape[1:]) or [1]}
                    for i in card.inputs
                ],
                "output": [
                    {"name": o.name, "data_type": f"TYPE_{o.datatype}", "dims": list(o.shape[1:])} for o in card.outputs
                ],
            }
        )

    @api.get(
        "/v2/models/{model}/stats",
        response_model=v2.V2ModelStats,
        responses=openapi.v2_errors(401, 403, 404, 408, 429, 503),
        summary="Triton statistics of the replica that answers",
    )
    async def v2_model_stats(model: str, key: str | None = CREDENTIAL) -> Response:
        """Inputs and batches executed by the replica that answers, by batch size."""
        card, _ = await gateway.gate(model, key)
        stats = await gateway.call(model, "stats")
        return JSONResponse({"model_stats": [{"name": card.name, "version": card.version, **stats}]})

    @api.post(
        "/v2/models/{model}/infer",
        response_model=v2.V2InferResponse,
        responses=V2_INFER_RESPONSES,
        openapi_extra=openapi.V2_INFER_REQUEST_BODY,
        summary="v2 inference (JSON or binary tensor data)",
    )
    @api.post(
        "/v2/models/{model}/versions/{version}/infer",
        response_model=v2.V2InferResponse,
        responses=V2_INFER_RESPONSES,
        openapi_extra=openapi.V2_INFER_REQUEST_BODY,
        summary="v2 inference on a version",
    )
    async def v2_infer(
        model: str, request: Request, version: str | None = None, key: str | None = CREDENTIAL
    ) -> Response:
        """Inputs as JSON tensors or binary tensor data; outputs likewise, or top-k `classification` strings."""
        card, auth_headers = await gateway.gate(model, key, version)
        body = await inputs.read_body(request, limits.max_body_bytes)
        infer_request, binary = v2.split_body(body, request.headers.get(v2.HEADER_LENGTH))
        tensors = v2.decode_inputs(infer_request, binary)
        accepted = {i.name: i.datatype for i in card.inputs}
        unknown = set(tensors) - set(accepted)
        given = set(tensors) - {v2.LABEL_INPUT}  # a generator's labels go with its seeds
        if unknown or len(given) != 1:
            raise BadRequest(
                f"send exactly one of the inputs {', '.join(repr(n) for n in accepted if n != v2.LABEL_INPUT)}"
                f" (see GET /v2/models/{card.name}); got {', '.join(sorted(tensors)) or 'none'}"
            )
        count = 0
        for name, value in tensors.items():
            kind = accepted[name]
            if kind == "BYTES" and not isinstance(value, list):
                raise BadRequest(f"input {name!r} must be BYTES")
            if kind != "BYTES" and not (
                isinstance(value, np.ndarray) and value.dtype.kind == ("f" if kind == "FP32" else "i")
            ):
                raise BadRequest(f"input {name!r} must be {kind}")
            if name in given:
                count = len(value)
        if count == 0:
            raise BadRequest("the input is empty")
        if count > limits.max_images_per_request:
            raise PayloadTooLarge(f"{count} items in one request; the limit is {limits.max_images_per_request}")
        outputs = await gateway.call(model, "infer", tensors)
        content, headers = v2.encode_response(card.name, card.version, infer_request, outputs, card.labels)
        return Response(content=content, headers=headers | auth_headers)

    return api
