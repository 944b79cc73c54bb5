"""Reading a request: its body under the size cap, its inputs in any of the accepted forms (raw,
multipart, JSON instances), and its parameters. Pure: a Starlette request in, bytes and values
out, or an API error; no Ray, no model.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncIterator
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from deployments import schemas
from deployments.args import LimitsArgs
from deployments.errors import (
    BadRequest,
    InvalidParameters,
    PayloadTooLarge,
    UnsupportedMediaType,
    describe_validation_error,
)

ParamsT = TypeVar("ParamsT", bound=BaseModel)
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    _check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def capped(request: Request, limit: int) -> Request:
    """The request, its body refused with 413 as soon as more than `limit` bytes of it arrive:
    for bodies read as they stream (an upload spooled to disk), never held whole."""
    _check_declared_length(request, limit)
    size = 0

    async def receive() -> Message:
        nonlocal size
        message = await request.receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return message

    return Request(request.scope, receive)


@contextlib.asynccontextmanager
async def uploaded_file(request: Request, part: str, limit: int) -> AsyncIterator[IO[bytes]]:
    """The file sent in the multipart part named `part`, spooled as it arrives under a body of at
    most `limit` bytes (413 past it); a seekable binary file, closed on leaving the context."""
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType(
            f"unsupported content type {media_type(request) or '(none)'!r}; send multipart/form-data "
            f"with the file in a part named {part!r}"
        )
    try:
        form = await capped(request, limit).form(max_files=1, max_fields=8)
    except (StarletteHTTPException, MultiPartException) as exc:
        detail = exc.detail if isinstance(exc, StarletteHTTPException) else exc.message
        raise BadRequest(f"malformed multipart body: {detail}") from None
    try:
        unexpected = [key for key in form if key != part]
        if unexpected:
            raise BadRequest(f"unexpected part {unexpected[0]!r}; send the file in a part named {part!r}")
        upload = form.get(part)
        if not isinstance(upload, UploadFile):
            raise BadRequest(f"no file in a part named {part!r} (a file part has a filename)")
        yield upload.file
    finally:
        await form.close()


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def b64(value: str, index: int) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"instances[{index}].b64 is not valid base64") from None


def validate(schema: type[ParamsT], values: dict[str, Any]) -> ParamsT:
    """Parameters checked against the route's schema: 422 naming the first bad one."""
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        raise InvalidParameters(describe_validation_error(exc)) from None


def accepts_png_only(accept: str) -> bool:
    """True when the client asks for image/png and not for JSON (curl's default */* gets JSON)."""
    types = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return "image/png" in types and not types & {"application/json", "*/*", "application/*"}


async def inputs_and_params(
    request: Request, limits: LimitsArgs, *, video: bool
) -> tuple[list[bytes | list[bytes]], dict[str, Any]]:
    """Inputs from a raw, multipart or JSON body, and parameters from the query and the body.

    Each input is an encoded image or clip; for video models (`video`), also a clip sent
    as still frames in order (multipart parts named `frame`, or JSON `frames`).
    """
    body = await read_body(request, limits.max_body_bytes)
    params: dict[str, Any] = dict(request.query_params)
    media = media_type(request)
    items: list[bytes | list[bytes]]
    if media in RAW_IMAGE_TYPES or media.startswith("image/") or (video and media.startswith("video/")):
        items = [body]
    elif media == "multipart/form-data":
        items, fields = await _multipart(request, body, limits, video=video)
        params.update(fields)
    elif media == "application/json":
        parsed = _parse_json(body, schemas.PredictBody)
        items = []
        for i, inst in enumerate(parsed.instances):
            if inst.frames is not None:
                if not video:
                    raise BadRequest(f"instances[{i}].frames: only video models take frames")
                items.append([b64(frame, i) for frame in inst.frames])
            else:
                items.append(b64(inst.b64 or "", i))
        params.update(parsed.parameters)
    else:
        kinds = "video/*, image/gif, " if video else ""
        raise UnsupportedMediaType(
            f"unsupported content type {media or '(none)'!r}; send {kinds}image/jpeg, image/png, image/webp, "
            "multipart/form-data or application/json"
        )
    if not items or not all(items) or not all(all(f) for f in items if isinstance(f, list)):
        raise BadRequest("no image in the request" if not video else "no clip in the request")
    if len(items) > limits.max_images_per_request:
        raise PayloadTooLarge(f"{len(items)} inputs in one request; the limit is {limits.max_images_per_request}")
    return items, params


async def images_and_params(request: Request, limits: LimitsArgs) -> tuple[list[bytes], dict[str, Any]]:
    """Images from a raw, multipart or JSON body; parameters from the query and the body."""
    items, params = await inputs_and_params(request, limits, video=False)
    return [item for item in items if isinstance(item, bytes)], params


async def _multipart(
    request: Request, body: bytes, limits: LimitsArgs, *, video: bool = False
) -> tuple[list[bytes | list[bytes]], dict[str, str]]:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    max_parts = limits.max_images_per_request + 1 + (limits.max_video_frames if video else 0)
    try:
        form = await Request(request.scope, replay).form(max_files=max_parts, max_fields=64)
    except StarletteHTTPException as exc:
        raise BadRequest(f"malformed multipart body: {exc.detail}") from None
    try:
        items: list[bytes | list[bytes]] = []
        frames: list[bytes] = []
        fields: dict[str, str] = {}
        file_parts = ("image", "video", "frame") if video else ("image",)
        for key, value in form.multi_items():
            if key in file_parts:
                data = await value.read() if isinstance(value, UploadFile) else value.encode()
                (frames if key == "frame" else items).append(data)
            elif isinstance(value, str):
                fields[key] = value
            else:
                names = ", ".join(repr(n) for n in file_parts)
                raise BadRequest(f"unexpected file part {key!r}; file parts are named {names}")
        if frames:
            items.append(frames)
        return items, fields
    finally:
        await form.close()


async def json_body(request: Request, limits: LimitsArgs, schema: type[ParamsT]) -> ParamsT:
    """A JSON body read under the size cap: 400 when it is not JSON, 422 when its values are wrong."""
    return _parse_json(await read_body(request, limits.max_body_bytes), schema)


def _parse_json(body: bytes, schema: type[ParamsT]) -> ParamsT:
    """`body` as `schema`: 400 when it is not JSON, 422 naming the first wrong value."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("request body is not valid JSON") from None
        raise InvalidParameters(describe_validation_error(exc)) from None
