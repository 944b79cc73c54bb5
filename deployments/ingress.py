"""The HTTP ingress: routes, request parsing and limits, protocol mapping. No torch here."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import schemas, v2
from deployments.args import AuthArgs, LimitsArgs
from deployments.auth import KeyStore, Tenant
from deployments.errors import (
    BadRequest,
    Forbidden,
    InvalidParameters,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    RouteNotSupported,
    ServingError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    as_serving_error,
    describe_validation_error,
)
from deployments.schemas import ModelCard

logger = logging.getLogger("ray.serve")

SERVER_NAME = "vision-maas"
SERVER_VERSION = "0.1.0"
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
RETRY_AFTER_S = "1"

app = FastAPI(
    title="vision-maas",
    version=SERVER_VERSION,
    summary="Image models as a service: classification over HTTP, KServe v1-style and Open Inference Protocol v2.",
)


def _error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    # /v2 answers in the protocol's own error shape; everything else in ours.
    body: dict[str, Any] = (
        {"error": message} if request.url.path.startswith("/v2") else {"error": {"code": code, "message": message}}
    )
    headers = dict(headers or {})
    if status in (429, 503):
        headers.setdefault("Retry-After", RETRY_AFTER_S)
    return JSONResponse(body, status_code=status, headers=headers)


@app.exception_handler(ServingError)
async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return _error_response(request, exc.status_code, exc.code, exc.message, exc.headers)


_BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, as a header.")


def credential(
    bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
    api_key: str | None = Security(_API_KEY),
) -> str | None:
    """The API key of the request, from Authorization: Bearer or X-API-Key."""
    return bearer.credentials if bearer is not None else api_key


# A plain default rather than Annotated: Serve's class-based ingress rebuilds method
# signatures and keeps `= Depends(...)` defaults, but drops Annotated metadata.
CREDENTIAL = Depends(credential)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error_response(request, 422, InvalidParameters.code, f"{where}: {first.get('msg')}")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(request, exc.status_code, code, str(exc.detail))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _b64(value: str, index: int) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"instances[{index}].b64 is not valid base64") from None


def _awaitable(response: Any) -> Awaitable[Any]:
    """A DeploymentResponse as a coroutine, so asyncio.wait_for can bound it."""

    async def wait() -> Any:
        return await response

    return wait()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    """Parses and limits requests, then calls the model deployment named in the URL."""

    def __init__(
        self,
        models: dict[str, DeploymentHandle[Any]],
        cards: dict[str, ModelCard],
        limits: LimitsArgs,
        auth: AuthArgs,
        limiter: DeploymentHandle[Any] | None,
    ) -> None:
        self._models = models
        self._cards = cards
        self._limits = limits
        self._limiter = limiter
        # Keys are read here, in the replica, from a file or the environment: they never
        # travel through Ray's object store.
        self._keys = KeyStore.load(auth.keys_file, auth.keys_env) if auth.enabled else None
        if self._keys is None:
            logger.warning("API key authentication is OFF (auth.enabled: false): every caller may use every model")

    async def _authorize(self, key: str | None, model: str | None) -> tuple[Tenant | None, dict[str, str]]:
        """The caller's tenant and X-RateLimit-* headers; 401, 403 or 429 when refused."""
        if self._keys is None:
            return None, {}
        if not key:
            raise Unauthorized(
                "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>",
                headers={"WWW-Authenticate": 'Bearer realm="vision-maas"'},
            )
        tenant = self._keys.authenticate(key)
        if tenant is None:
            raise Unauthorized(
                "the API key is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="vision-maas", error="invalid_token"'},
            )
        if model is not None and not tenant.may_use(model):
            raise Forbidden(f"this API key may not use model {model!r}")
        if self._limiter is None or (tenant.rate_limit is None and tenant.quota is None):
            return tenant, {}
        try:
            decision = await self._limiter.acquire.remote(tenant.name, tenant.rate_limit, tenant.quota)
        except Exception:
            logger.exception("rate limiter unavailable")
            raise Overloaded("rate limiting is unavailable; retry later") from None
        if not decision.allowed:
            raise TooManyRequests(f"tenant {tenant.name!r} is over its rate limit or quota", headers=decision.headers())
        return tenant, decision.headers()

    # ---- plumbing -------------------------------------------------------------------

    def _card(self, model: str) -> ModelCard:
        try:
            return self._cards[model]
        except KeyError:
            raise ModelNotFound(f"model {model!r} is not served; see GET /v1/models") from None

    async def _call(self, model: str, method: str, *args: Any) -> Any:
        """Call a model deployment method, mapping timeouts, backpressure and domain errors."""
        response = getattr(self._models[model], method).remote(*args)
        try:
            return await asyncio.wait_for(_awaitable(response), self._limits.request_timeout_s)
        except TimeoutError:
            response.cancel()
            raise RequestTimeout(f"model {model!r} did not answer within {self._limits.request_timeout_s}s") from None
        except BackPressureError:
            raise Overloaded(f"model {model!r} is at capacity; retry later") from None
        except (RayActorError, ActorUnavailableError):
            # The replica died mid-request (killed, OOM, node lost); Serve is replacing it.
            logger.warning("model %s: replica unavailable during %s", model, method)
            raise Unavailable(f"model {model!r} is restarting; retry later") from None
        except Exception as exc:
            error = as_serving_error(exc)
            if error is None:
                logger.exception("model %s: %s failed", model, method)
                raise ServingError("internal error") from None
            raise error from None

    async def _images_and_params(self, request: Request) -> tuple[list[bytes], dict[str, Any]]:
        """Images from a raw, multipart or JSON body; parameters from the query and the body."""
        body = await read_body(request, self._limits.max_body_bytes)
        params: dict[str, Any] = dict(request.query_params)
        media = _media_type(request)
        if media in RAW_IMAGE_TYPES or media.startswith("image/"):
            images = [body]
        elif media == "multipart/form-data":
            images, fields = await self._multipart(request, body)
            params.update(fields)
        elif media == "application/json":
            try:
                parsed = schemas.PredictBody.model_validate_json(body)
            except ValidationError as exc:
                if any(e["type"] == "json_invalid" for e in exc.errors()):
                    raise BadRequest("request body is not valid JSON") from None
                raise InvalidParameters(describe_validation_error(exc)) from None
            images = [_b64(inst.b64, i) for i, inst in enumerate(parsed.instances)]
            params.update(parsed.parameters)
        else:
            raise UnsupportedMediaType(
                f"unsupported content type {media or '(none)'!r}; send image/jpeg, image/png, image/webp, "
                "multipart/form-data or application/json"
            )
        if not images or not all(images):
            raise BadRequest("no image in the request")
        if len(images) > self._limits.max_images_per_request:
            raise PayloadTooLarge(
                f"{len(images)} images in one request; the limit is {self._limits.max_images_per_request}"
            )
        return images, params

    async def _multipart(self, request: Request, body: bytes) -> tuple[list[bytes], dict[str, str]]:
        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(
                max_files=self._limits.max_images_per_request + 1, max_fields=64
            )
        except StarletteHTTPException as exc:
            raise BadRequest(f"malformed multipart body: {exc.detail}") from None
        try:
            images: list[bytes] = []
            fields: dict[str, str] = {}
            for key, value in form.multi_items():
                if key == "image":
                    images.append(await value.read() if isinstance(value, UploadFile) else value.encode())
                elif isinstance(value, str):
                    fields[key] = value
                else:
                    raise BadRequest(f"unexpected file part {key!r}; image parts are named 'image'")
            return images, fields
        finally:
            await form.close()

    # ---- v1 -------------------------------------------------------------------------

    @app.post(
        "/v1/models/{model}:predict",
        response_model=schemas.PredictResponse,
        responses=schemas.ERROR_RESPONSES,
        openapi_extra=schemas.PREDICT_REQUEST_BODY,
        summary="Predict on one or more images",
    )
    async def predict(self, model: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        card = self._card(model)
        _, headers = await self._authorize(key, model)
        if card.task not in schemas.PARAMS_BY_TASK:
            raise RouteNotSupported(f"model {model!r} ({card.task}) has no :predict route")
        images, raw_params = await self._images_and_params(request)
        try:
            params = schemas.PARAMS_BY_TASK[card.task].model_validate(raw_params)
        except ValidationError as exc:
            raise InvalidParameters(describe_validation_error(exc)) from None
        result = await self._call(model, "predict", images, params.model_dump())
        return JSONResponse(result, headers=headers)

    @app.get(
        "/v1/models", response_model=schemas.ModelList, responses=schemas.ERROR_RESPONSES, summary="The served models"
    )
    async def list_models(self, key: str | None = CREDENTIAL) -> Response:
        tenant, headers = await self._authorize(key, None)
        names = [name for name in self._cards if tenant is None or tenant.may_use(name)]
        entries = await asyncio.gather(*(self._call(name, "metadata") for name in names))
        return JSONResponse({"models": list(entries)}, headers=headers)

    @app.get(
        "/v1/models/{model}",
        response_model=schemas.ModelMetadata,
        responses=schemas.ERROR_RESPONSES,
        summary="One model: task, input, labels, weights, batching",
    )
    async def get_model(self, model: str, key: str | None = CREDENTIAL) -> Response:
        self._card(model)
        _, headers = await self._authorize(key, model)
        return JSONResponse(await self._call(model, "metadata"), headers=headers)

    @app.get("/healthz", summary="Liveness of the ingress")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    # ---- Open Inference Protocol v2 ---------------------------------------------------

    @app.get("/v2", summary="v2 server metadata")
    async def v2_server(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/health/live", summary="v2 server liveness")
    async def v2_live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="v2 server readiness: every model answers")
    async def v2_ready(self) -> Response:
        ready = await asyncio.gather(*(self._model_ready(name) for name in self._cards))
        return JSONResponse({"ready": all(ready)}, status_code=200 if all(ready) else 503)

    async def _model_ready(self, model: str) -> bool:
        try:
            return bool(await asyncio.wait_for(_awaitable(self._models[model].ready.remote()), 5.0))
        except Exception:
            return False

    def _v2_card(self, model: str, version: str | None) -> ModelCard:
        card = self._card(model)
        if version is not None and version != card.version:
            raise ModelNotFound(f"model {model!r} has no version {version!r}; it serves {card.version!r}")
        return card

    @app.get("/v2/models/{model}", responses=schemas.V2_ERROR_RESPONSES, summary="v2 model metadata")
    @app.get(
        "/v2/models/{model}/versions/{version}",
        responses=schemas.V2_ERROR_RESPONSES,
        summary="v2 model metadata of a version",
    )
    async def v2_model(self, model: str, version: str | None = None, key: str | None = CREDENTIAL) -> dict[str, Any]:
        card = self._v2_card(model, version)
        await self._authorize(key, model)
        return {
            "name": card.name,
            "versions": [card.version],
            "platform": "pytorch",
            "inputs": [
                {"name": v2.IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                {"name": v2.TENSOR_INPUT, "datatype": "FP32", "shape": [-1, *card.input_shape]},
            ],
            "outputs": [o.model_dump() for o in card.outputs],
        }

    @app.get("/v2/models/{model}/ready", responses=schemas.V2_ERROR_RESPONSES, summary="v2 model readiness")
    @app.get(
        "/v2/models/{model}/versions/{version}/ready",
        responses=schemas.V2_ERROR_RESPONSES,
        summary="v2 model readiness of a version",
    )
    async def v2_model_ready(self, model: str, version: str | None = None, key: str | None = CREDENTIAL) -> Response:
        card = self._v2_card(model, version)
        await self._authorize(key, model)
        ready = await self._model_ready(card.name)
        return JSONResponse({"name": card.name, "ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2/models/{model}/config", responses=schemas.V2_ERROR_RESPONSES, summary="Triton model configuration")
    async def v2_model_config(self, model: str, key: str | None = CREDENTIAL) -> dict[str, Any]:
        card = self._card(model)
        await self._authorize(key, model)
        meta = await self._call(model, "metadata")
        return {
            "name": card.name,
            "platform": "pytorch",
            "max_batch_size": meta["batching"]["max_batch_size"],
            "input": [
                {"name": v2.IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1]},
                {"name": v2.TENSOR_INPUT, "data_type": "TYPE_FP32", "dims": list(card.input_shape)},
            ],
            "output": [
                {"name": o.name, "data_type": f"TYPE_{o.datatype}", "dims": list(o.shape[1:])} for o in card.outputs
            ],
        }

    @app.get(
        "/v2/models/{model}/stats",
        responses=schemas.V2_ERROR_RESPONSES,
        summary="Triton statistics of the replica that answers",
    )
    async def v2_model_stats(self, model: str, key: str | None = CREDENTIAL) -> dict[str, Any]:
        card = self._card(model)
        await self._authorize(key, model)
        stats = await self._call(model, "stats")
        return {"model_stats": [{"name": card.name, "version": card.version, **stats}]}

    @app.post(
        "/v2/models/{model}/infer",
        responses=schemas.V2_ERROR_RESPONSES,
        openapi_extra=schemas.V2_INFER_REQUEST_BODY,
        summary="v2 inference (JSON or binary tensor data)",
    )
    @app.post(
        "/v2/models/{model}/versions/{version}/infer",
        responses=schemas.V2_ERROR_RESPONSES,
        openapi_extra=schemas.V2_INFER_REQUEST_BODY,
        summary="v2 inference on a version",
    )
    async def v2_infer(
        self, model: str, request: Request, version: str | None = None, key: str | None = CREDENTIAL
    ) -> Response:
        card = self._v2_card(model, version)
        _, auth_headers = await self._authorize(key, model)
        body = await read_body(request, self._limits.max_body_bytes)
        infer_request, binary = v2.split_body(body, request.headers.get(v2.HEADER_LENGTH))
        inputs = v2.decode_inputs(infer_request, binary)
        unknown = set(inputs) - {v2.IMAGE_INPUT, v2.TENSOR_INPUT}
        if unknown or len(inputs) != 1:
            raise BadRequest(
                f"send exactly one input: {v2.IMAGE_INPUT!r} (BYTES, encoded images) or "
                f"{v2.TENSOR_INPUT!r} (FP32, preprocessed NCHW); got {', '.join(sorted(inputs))}"
            )
        images = inputs.get(v2.IMAGE_INPUT)
        tensor = inputs.get(v2.TENSOR_INPUT)
        if images is not None and not isinstance(images, list):
            raise BadRequest(f"input {v2.IMAGE_INPUT!r} must be BYTES")
        if tensor is not None and (not isinstance(tensor, np.ndarray) or tensor.dtype.kind != "f"):
            raise BadRequest(f"input {v2.TENSOR_INPUT!r} must be FP32")
        count = len(images) if images is not None else len(tensor) if tensor is not None else 0
        if count == 0:
            raise BadRequest("the input holds no images")
        if count > self._limits.max_images_per_request:
            raise PayloadTooLarge(f"{count} images in one request; the limit is {self._limits.max_images_per_request}")
        outputs = await self._call(model, "infer", images, tensor)
        content, headers = v2.encode_response(card.name, card.version, infer_request, outputs, card.labels)
        return Response(content=content, headers=headers | auth_headers)
