"""The version and rollout routes of trained models (admin scope): list versions with their
reports, send a share of :predict to a canary, promote it, roll back. deployments.rollouts holds
the state and its rules; these routes only authorize, parse and answer."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from contract.lifecycle import ModelVersionList, Rollout, RolloutRequest
from deployments import inputs, openapi, rollouts
from deployments.gateway import Gateway
from deployments.rest.common import CREDENTIAL
from deployments.store import Store


def _json(model: Rollout | ModelVersionList, headers: dict[str, str]) -> Response:
    return Response(model.model_dump_json(), media_type="application/json", headers=headers)


def router(gateway: Gateway, store: Store) -> APIRouter:
    """The routes over the model store at `store`."""
    api = APIRouter(tags=["lifecycle"])
    limits = gateway.limits

    @api.get(
        "/v1/models/{model}/versions",
        response_model=ModelVersionList,
        responses=openapi.errors(401, 403, 404, 429),
        summary="A trained model's versions, with their evaluation reports and rollout state",
    )
    async def versions(model: str, key: str | None = CREDENTIAL) -> Response:
        """Oldest first; each version's state (stable, canary, previous, inactive) and share of :predict."""
        _, headers = await gateway.authorize_admin(key)
        listed = await asyncio.to_thread(rollouts.list_versions, store, model)
        return _json(ModelVersionList(name=model, versions=listed), headers)

    @api.get(
        "/v1/models/{model}/rollout",
        response_model=Rollout,
        responses=openapi.errors(401, 403, 404, 429),
        summary="Which versions answer a trained model's :predict",
    )
    async def get_rollout(model: str, key: str | None = CREDENTIAL) -> Response:
        """The stable version, the canary and its share, and the earlier stable versions."""
        _, headers = await gateway.authorize_admin(key)
        return _json(await asyncio.to_thread(rollouts.require_rollout, store, model), headers)

    @api.post(
        "/v1/models/{model}/rollout",
        response_model=Rollout,
        responses=openapi.errors(400, 401, 403, 404, 409, 413, 422, 429),
        openapi_extra=openapi.json_request_body(RolloutRequest),
        summary="Send a share of :predict to a version (a canary); 100 promotes it",
    )
    async def rollout(model: str, request: Request, key: str | None = CREDENTIAL) -> Response:
        """`{"version", "percent"}`: below 100 the version is the canary at that share; 100 makes it stable."""
        _, headers = await gateway.authorize_admin(key)
        body = await inputs.json_body(request, limits, RolloutRequest)
        return _json(await asyncio.to_thread(rollouts.apply_rollout, store, model, body), headers)

    @api.post(
        "/v1/models/{model}/rollback",
        response_model=Rollout,
        responses=openapi.errors(401, 403, 404, 409, 429),
        summary="Drop the canary, or return to the previous stable version",
    )
    async def rollback(model: str, key: str | None = CREDENTIAL) -> Response:
        """With a canary, all of :predict goes back to the stable version; without, the previous one is stable again."""
        _, headers = await gateway.authorize_admin(key)
        return _json(await asyncio.to_thread(rollouts.rollback, store, model), headers)

    return api
