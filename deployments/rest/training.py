"""The training job routes (/v1/training/jobs): submit, list, show, cancel and follow (Server-Sent
Events). Each needs the admin scope; the TrainingJobs deployment (deployments/training.py) does the
work, called over its handle. Mounted only when `training.enabled`."""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from contract.lifecycle import TrainingJob, TrainingJobList, TrainingJobRequest
from deployments import inputs, openapi
from deployments.errors import RequestTimeout, ServingError, Unavailable, as_serving_error
from deployments.gateway import Gateway
from deployments.rest.common import CREDENTIAL
from deployments.schemas import inline_schema

logger = logging.getLogger("ray.serve")

# A call to the TrainingJobs replica answers from memory; it never waits on training.
CALL_TIMEOUT_S = 30.0

_REQUEST_EXAMPLE = {
    "name": "shapes",
    "base_model": "digits_cnn",
    "dataset": "39d36d881b08bc4b",
    "epochs": 5,
    "learning_rate": 0.001,
    "batch_size": 32,
    "freeze_backbone": False,
    "augment": True,
    "val_fraction": 0.2,
    "seed": 0,
}
_JOB_EXAMPLE = {
    "id": "5f0c2a9e81d34b7a",
    "status": "running",
    "request": _REQUEST_EXAMPLE,
    "tenant": None,
    "progress": {
        "epoch": 2,
        "epochs": 5,
        "step": 11,
        "loss": 0.21,
        "val_accuracy": 0.98,
        "elapsed_s": 14.2,
        "eta_s": 9.5,
    },
    "created": 1767225600.0,
    "started": 1767225601.5,
}
_EVENTS_EXAMPLE = 'event: progress\ndata: {"id": "5f0c2a9e81d34b7a", "status": "running", ...}\n\n'


def _json(example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": example}}}}


async def call_jobs(response: Any) -> Any:
    """Await a call to the TrainingJobs replica, its failures mapped to the API's errors."""

    async def wait() -> Any:
        return await response

    try:
        return await asyncio.wait_for(wait(), CALL_TIMEOUT_S)
    except TimeoutError:
        response.cancel()
        raise RequestTimeout(f"the training jobs service did not answer within {CALL_TIMEOUT_S}s") from None
    except (RayActorError, ActorUnavailableError):
        raise Unavailable("the training jobs service is restarting; retry later") from None
    except Exception as exc:
        error = as_serving_error(exc)
        if error is None:
            logger.exception("training jobs call failed")
            raise ServingError("internal error") from None
        raise error from None


def router(gateway: Gateway, jobs: DeploymentHandle[Any] | None) -> APIRouter:
    """The training job routes over `gateway` (credentials, limits) and the TrainingJobs handle
    (None where no TrainingJobs deployment runs: the routes answer 503)."""
    api = APIRouter(tags=["training"])

    def service() -> DeploymentHandle[Any]:
        if jobs is None:
            raise Unavailable("training jobs do not run in this application")
        return jobs

    @api.post(
        "/v1/training/jobs",
        status_code=202,
        response_model=TrainingJob,
        responses={
            **openapi.errors(400, 401, 403, 404, 409, 413, 422, 429, 503),
            202: {
                "description": "Queued; `Location` names the job",
                "content": {"application/json": {"example": _JOB_EXAMPLE | {"status": "queued", "progress": None}}},
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": inline_schema(TrainingJobRequest), "example": _REQUEST_EXAMPLE}
                },
            }
        },
        summary="Start a training job: fine-tune a registered classifier on a data set",
    )
    async def submit_job(request: Request, key: str | None = CREDENTIAL) -> Response:
        """Queued at once (202); it trains on Ray Train when a slot is free. 404: unknown data set;
        409: the name is a configured model's; 422: the base model is not a registered classifier;
        429: the tenant has `max_jobs_per_tenant` jobs queued or running."""
        tenant, headers = await gateway.authorize_admin(key)
        body = await inputs.json_body(request, gateway.limits, TrainingJobRequest)
        job = await call_jobs(service().submit.remote(body.model_dump(mode="json"), tenant.name if tenant else None))
        location = str(request.url_for("get_job", job_id=job["id"]))
        return JSONResponse(job, status_code=202, headers=headers | {"Location": location})

    @api.get(
        "/v1/training/jobs",
        response_model=TrainingJobList,
        responses={**openapi.errors(401, 403, 408, 429, 503), **_json({"jobs": [_JOB_EXAMPLE]})},
        summary="Every training job, oldest first",
    )
    async def list_jobs(key: str | None = CREDENTIAL) -> Response:
        """Queued, running and finished jobs with their progress and, when done, their report."""
        _, headers = await gateway.authorize_admin(key)
        return JSONResponse({"jobs": await call_jobs(service().list_jobs.remote())}, headers=headers)

    @api.get(
        "/v1/training/jobs/{job_id}",
        response_model=TrainingJob,
        responses={**openapi.errors(401, 403, 404, 408, 429, 503), **_json(_JOB_EXAMPLE)},
        summary="One training job: status, progress and, once succeeded, its version and report",
    )
    async def get_job(job_id: str, key: str | None = CREDENTIAL) -> Response:
        """Progress: epoch, optimizer steps so far, loss, validation accuracy, elapsed and remaining seconds."""
        _, headers = await gateway.authorize_admin(key)
        return JSONResponse(await call_jobs(service().get.remote(job_id)), headers=headers)

    @api.delete(
        "/v1/training/jobs/{job_id}",
        response_model=TrainingJob,
        responses={
            **openapi.errors(401, 403, 404, 408, 409, 429, 503),
            **_json(_JOB_EXAMPLE | {"status": "cancelled", "finished": 1767225620.0}),
        },
        summary="Cancel a queued or running training job",
    )
    async def cancel_job(job_id: str, key: str | None = CREDENTIAL) -> Response:
        """The job, cancelled: its workers stop at their next check and nothing is published. 409 when it has finished."""
        _, headers = await gateway.authorize_admin(key)
        return JSONResponse(await call_jobs(service().cancel.remote(job_id)), headers=headers)

    @api.get(
        "/v1/training/jobs/{job_id}/events",
        response_class=Response,
        responses={
            **openapi.errors(401, 403, 404, 408, 429, 503),
            200: {
                "description": "Server-Sent Events: `event: progress` with the job as JSON each time it changes, "
                "then `event: done` with the finished job; a `: ping` comment after 15 s of silence",
                "content": {"text/event-stream": {"schema": {"type": "string"}, "example": _EVENTS_EXAMPLE}},
            },
        },
        summary="Follow a training job as Server-Sent Events",
    )
    async def job_events(job_id: str, key: str | None = CREDENTIAL) -> Response:
        """The stream ends after the `done` event; an unknown job is 404 before it starts."""
        _, headers = await gateway.authorize_admin(key)
        await call_jobs(service().get.remote(job_id))
        stream: DeploymentResponseGenerator[Any] = service().options(stream=True).events.remote(job_id)  # type: ignore[assignment]

        async def body() -> AsyncIterator[str]:
            try:
                async for event, data in stream:
                    yield ": ping\n\n" if event == "ping" else f"event: {event}\ndata: {data}\n\n"
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]

        return StreamingResponse(
            body(), media_type="text/event-stream", headers=headers | {"Cache-Control": "no-cache"}
        )

    return api
