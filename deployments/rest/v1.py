"""The v1 routes (KServe v1-style JSON): :predict, :generate, :explain, /v1/images:annotate and
the catalogue. Each model route starts at the gateway, then reads its body, then its parameters."""

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from contract import answers
from contract.tasks import Task
from deployments import inputs, openapi, schemas
from deployments.errors import NotAcceptable, PayloadTooLarge, RouteNotSupported
from deployments.gateway import Gateway
from deployments.rest.common import CREDENTIAL, INFER_ERRORS


def answer(result: BaseModel, headers: dict[str, str]) -> Response:
    """A model's answer (contract.answers), serialized once; absent optional fields are left out."""
    return Response(result.model_dump_json(exclude_none=True), media_type="application/json", headers=headers)


PREDICT_PATH = "/v1/models/{model}:predict"
GENERATE_PATH = "/v1/models/{model}:generate"


async def answer_predict(
    gateway: Gateway, model: str, request: Request, key: str | None, version: str | None = None
) -> Response:
    """:predict (of one version, or the model's): gate, body, parameters, the model's answer."""
    card, headers = await gateway.gate(model, key, version)
    if card.task not in schemas.PARAMS_BY_TASK:
        raise RouteNotSupported(f"model {model!r} ({card.task}) has no :predict route; see its task's route")
    video = card.task == Task.VIDEO_CLASSIFICATION
    items, raw_params = await inputs.inputs_and_params(request, gateway.limits, video=video)
    params = inputs.validate(schemas.PARAMS_BY_TASK[card.task], raw_params)
    method = "predict_clips" if video else "predict"
    return answer(await gateway.call(model, method, items, params), headers)


async def answer_generate(gateway: Gateway, model: str, request: Request, key: str | None) -> Response:
    """:generate: gate, body, the model's images (JSON, or one PNG with `Accept: image/png`)."""
    limits = gateway.limits
    card, headers = await gateway.gate(model, key)
    if card.task != Task.GENERATION:
        raise RouteNotSupported(f"model {model!r} ({card.task}) does not generate images; see :predict")
    body = await inputs.json_body(request, limits, schemas.GenerateBody)
    if body.num_images > limits.max_images_per_request:
        raise PayloadTooLarge(f"num_images {body.num_images} is over the limit of {limits.max_images_per_request}")
    want_png = inputs.accepts_png_only(request.headers.get("accept", ""))
    if want_png and body.num_images != 1:
        raise NotAcceptable("Accept: image/png returns one image; ask for num_images 1 or accept application/json")
    result: answers.GenerateResponse = await gateway.call(
        model, "generate", body.num_images, body.seed, body.for_model()
    )
    if want_png:
        image = result.images[0]
        headers |= {"X-Seed": str(result.seed), "X-Label": image.label, "X-Model-Version": result.model_version}
        return Response(base64.b64decode(image.image), media_type="image/png", headers=headers)
    return answer(result, headers)


HotHandler = Callable[[Gateway, str, Request, str | None], Awaitable[Response]]


# A model's hot verb (deployments.topology.task_verb): its route's path template and handler, the
# catalogue's route below and the model application's (deployments.rest.app.create_model_app).
HOT_ROUTES: dict[str, tuple[str, HotHandler]] = {
    "predict": (PREDICT_PATH, answer_predict),
    "generate": (GENERATE_PATH, answer_generate),
}


def router(gateway: Gateway) -> APIRouter:
    """The v1 routes over `gateway`."""
    api = APIRouter()
    limits = gateway.limits

    @api.post(
        PREDICT_PATH,
        response_model=answers.PredictResponse,
        responses=openapi.errors(*INFER_ERRORS),
        openapi_extra=openapi.PREDICT_OPENAPI,
        summary="Predict on one or more images",
    )
    async def predict(model: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        """Images as a raw body, multipart `image` parts or JSON `instances`; parameters in the query, form or JSON."""
        return await answer_predict(gateway, model, request, key)

    @api.post(
        "/v1/models/{model}/versions/{version}:predict",
        response_model=answers.PredictResponse,
        responses=openapi.errors(*INFER_ERRORS),
        openapi_extra=openapi.PREDICT_OPENAPI,
        summary="Predict with one version of a model",
    )
    async def predict_version(model: str, version: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        """As :predict, answered by `version` whatever the model's rollout (404 when it has no such version)."""
        return await answer_predict(gateway, model, request, key, version)

    @api.post(
        GENERATE_PATH,
        response_model=answers.GenerateResponse,
        responses={
            **openapi.errors(400, 401, 403, 404, 406, 408, 413, 422, 429, 503),
            200: openapi.GENERATED_PNG_RESPONSE,
        },
        openapi_extra=openapi.json_request_body(schemas.GenerateBody),
        summary="Generate images (generative models)",
    )
    async def generate(model: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        """Base64 PNGs in JSON, or one PNG itself with `Accept: image/png`; the same seed gives the same images."""
        return await answer_generate(gateway, model, request, key)

    @api.post(
        "/v1/models/{model}:explain",
        response_model=answers.ExplainResponse,
        responses=openapi.errors(*INFER_ERRORS),
        openapi_extra=openapi.EXPLAIN_OPENAPI,
        summary="Explanation maps of a classifier's decision (Grad-CAM, attention rollout)",
    )
    async def explain(model: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        """Images sent as to :predict; a heatmap and an overlay per image, for the top label or `target`."""
        card, headers = await gateway.gate(model, key)
        if not card.explainable:
            raise RouteNotSupported(f"model {model!r} ({card.task}) has no :explain route; classifiers do")
        images, raw_params = await inputs.images_and_params(request, limits)
        params = inputs.validate(schemas.ExplainParams, raw_params)
        return answer(await gateway.call(model, "explain", images, params), headers)

    @api.post(
        "/v1/images:annotate",
        response_model=schemas.AnnotateResponse,
        responses=openapi.errors(400, 401, 413, 422, 429, 503),
        openapi_extra=openapi.json_request_body(schemas.AnnotateBody),
        summary="Several models on each of several images; errors reported per feature",
    )
    async def annotate(request: Request, key: str | None = CREDENTIAL) -> Response:
        """Each image is decoded once and shared by its models; an unknown or refused model fails only its feature."""
        tenant, headers = await gateway.authorize(key, None)
        body = await inputs.json_body(request, limits, schemas.AnnotateBody)
        if len(body.requests) > limits.max_annotate_images:
            raise PayloadTooLarge(
                f"{len(body.requests)} images in one request; the limit is {limits.max_annotate_images}"
            )
        # Every image is decoded once, in the gateway, and shared with its models through the
        # object store as one uint8 array: compact, and no model decodes it again.
        responses = await asyncio.gather(*(gateway.annotate_one(req, tenant) for req in body.requests))
        return JSONResponse({"responses": list(responses)}, headers=headers)

    @api.get(
        "/v1/models",
        response_model=schemas.ModelList,
        responses=openapi.errors(401, 408, 429, 503),
        summary="The served models",
    )
    async def list_models(key: str | None = CREDENTIAL) -> Response:
        """Every model the caller's API key may use, read live from its replicas."""
        tenant, headers = await gateway.authorize(key, None)
        trained = gateway.trained.names() if gateway.trained is not None else []
        names = [name for name in [*gateway.cards, *trained] if tenant is None or tenant.may_use(name)]

        async def entry(name: str) -> Any:
            if name not in gateway.cards and gateway.trained is not None:
                gateway.trained.pin_stable(name)  # a trained model's entry is its stable version's
            return await gateway.call(name, "metadata")

        entries = await asyncio.gather(*(entry(name) for name in names))
        return JSONResponse({"models": list(entries)}, headers=headers)

    @api.get(
        "/v1/models/{model}",
        response_model=schemas.ModelMetadata,
        responses=openapi.errors(401, 403, 404, 408, 429, 503),
        summary="One model: task, input, labels, weights, batching",
    )
    async def get_model(model: str, key: str | None = CREDENTIAL) -> Response:
        """The model's catalogue entry, read live from a replica."""
        _, headers = await gateway.gate(model, key)
        return JSONResponse(await gateway.call(model, "metadata"), headers=headers)

    return api
