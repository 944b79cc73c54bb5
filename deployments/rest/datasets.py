"""The data set routes (admin scope): upload an archive of `<label>/<image>` folders, list, show
and delete. The archive rules and the store are deployments.datasets'; this is the HTTP side."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from contract.lifecycle import DATASET_ID_PATTERN, Dataset, DatasetList
from deployments import datasets, inputs, openapi
from deployments.args import DatasetLimits
from deployments.gateway import Gateway
from deployments.rest.common import CREDENTIAL
from deployments.rest.training import call_jobs
from deployments.store import Store
from models.images import ImageLimits

ARCHIVE_PART = "archive"

_EXAMPLE: dict[str, Any] = {
    "id": "3f2a9c0e5b7d1486",
    "classes": {"circle": 40, "square": 38},
    "images": 78,
    "rejected": [{"file": "square/notes.txt", "error": "unsupported image format; allowed: jpeg, png, webp"}],
    "created": 1767225600.0,
}
_DATASET = {"application/json": {"example": _EXAMPLE}}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        ARCHIVE_PART: {
                            "type": "string",
                            "format": "binary",
                            "description": "A zip, tar or tar.gz of <label>/<image> folders (told by content).",
                        }
                    },
                    "required": [ARCHIVE_PART],
                },
                "encoding": {ARCHIVE_PART: {"contentType": "application/zip, application/x-tar, application/gzip"}},
            }
        },
    }
}
_DATASET_ID = Path(pattern=DATASET_ID_PATTERN, description="The data set's id: 16 hex digits of its archive's sha256.")


def router(gateway: Gateway, store: Store, limits: DatasetLimits) -> APIRouter:
    """The /v1/datasets routes over the model store at `store`, archives under `limits`."""
    api = APIRouter()
    image_limits = ImageLimits(max_bytes=gateway.limits.max_image_bytes, max_pixels=gateway.limits.max_image_pixels)
    # One archive is read at a time in this replica: decoding thousands of images is CPU work
    # that other requests to the catalogue share.
    reading = asyncio.Semaphore(1)

    @api.post(
        "/v1/datasets",
        status_code=201,
        response_model=Dataset,
        responses={
            **openapi.errors(400, 401, 403, 408, 413, 415, 422, 429, 503),
            200: {
                "model": Dataset,
                "description": "The same archive, stored before: its data set",
                "content": _DATASET,
            },
            201: {
                "description": "Stored",
                "content": _DATASET,
                "headers": {"Location": {"description": "The data set's URL.", "schema": {"type": "string"}}},
            },
        },
        openapi_extra=_UPLOAD_BODY,
        summary="Upload a labelled image set (a zip or tar of <label>/<image> folders)",
    )
    async def upload_dataset(request: Request, key: str | None = CREDENTIAL) -> Response:
        """Every image is decoded as :predict decodes it: one that does not decode is listed in `rejected`, the
        rest are kept. An archive that breaks a rule is refused whole and nothing is stored. The id is the
        archive's hash: the same archive again answers 200 with the data set stored before."""
        _, headers = await gateway.authorize_admin(key)
        async with inputs.uploaded_file(request, ARCHIVE_PART, limits.max_archive_bytes) as upload, reading:
            dataset, created = await asyncio.to_thread(datasets.ingest, store, upload, limits, image_limits)
        if created:
            headers = headers | {"Location": f"/v1/datasets/{dataset.id}"}
        return Response(
            dataset.model_dump_json(),
            status_code=201 if created else 200,
            media_type="application/json",
            headers=headers,
        )

    @api.get(
        "/v1/datasets",
        response_model=DatasetList,
        responses={
            **openapi.errors(401, 403, 429),
            200: {
                "description": "Every stored data set",
                "content": {"application/json": {"example": {"datasets": [_EXAMPLE]}}},
            },
        },
        summary="The stored data sets",
    )
    async def list_datasets(key: str | None = CREDENTIAL) -> Response:
        """Every stored data set, oldest first."""
        _, headers = await gateway.authorize_admin(key)
        found = await asyncio.to_thread(datasets.list_datasets, store)
        return Response(DatasetList(datasets=found).model_dump_json(), media_type="application/json", headers=headers)

    @api.get(
        "/v1/datasets/{dataset_id}",
        response_model=Dataset,
        responses={
            **openapi.errors(401, 403, 404, 422, 429),
            200: {"description": "The data set", "content": _DATASET},
        },
        summary="One data set: its classes, image counts and rejected files",
    )
    async def get_dataset(dataset_id: str = _DATASET_ID, key: str | None = CREDENTIAL) -> Response:
        """The data set as stored when its archive was uploaded."""
        _, headers = await gateway.authorize_admin(key)
        dataset = await asyncio.to_thread(datasets.get_dataset, store, dataset_id)
        return Response(dataset.model_dump_json(), media_type="application/json", headers=headers)

    @api.delete(
        "/v1/datasets/{dataset_id}",
        status_code=204,
        response_class=Response,
        responses={**openapi.errors(401, 403, 404, 409, 422, 429, 503), 204: {"description": "Deleted"}},
        summary="Delete a data set",
    )
    async def delete_dataset(dataset_id: str = _DATASET_ID, key: str | None = CREDENTIAL) -> Response:
        """Its images and record are removed; versions trained from it keep their weights and reports.
        409 while a queued or running training job uses it."""
        _, headers = await gateway.authorize_admin(key)
        if gateway.training_jobs is None:  # no job can use it: nothing runs jobs here
            await asyncio.to_thread(datasets.delete_dataset, store, dataset_id)
        else:
            await call_jobs(gateway.training_jobs.delete_dataset.remote(dataset_id))
        return Response(status_code=204, headers=headers)

    return api
