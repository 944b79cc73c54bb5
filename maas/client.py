"""Python client of the vision-maas HTTP API, sync and async, retrying the way the server asks.

Both clients share everything but the send-and-sleep loop: requests are built as plain,
re-sendable `_Call`s, responses are parsed by the same functions, and one `_Attempts` per call
decides whether, and after how long, to try again. httpx and numpy are the only imports
beyond the standard library and the contract (`contract/`, pydantic shapes): the client never
imports the server's code.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import math
import os
import random
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, Self, TypeAlias, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
from pydantic import BaseModel, ValidationError

from contract.errors import ERROR_CODE_HEADER
from contract.lifecycle import (
    Dataset,
    DatasetList,
    ModelVersion,
    ModelVersionList,
    Rollout,
    RolloutRequest,
    TrainingJob,
    TrainingJobList,
    TrainingJobRequest,
)
from contract.v2 import HEADER_LENGTH, IMAGE_INPUT, numpy_dtype, pack_bytes, unpack_bytes
from maas.archive import Archive, PackProgress, open_archive
from maas.sse import EventParser

ImageSource: TypeAlias = bytes | bytearray | str | os.PathLike[str]
"""An encoded image: its bytes, or the path of a file holding them."""

Images: TypeAlias = ImageSource | Sequence[ImageSource]
"""One image or several; several go in one request and come back in the same order."""

ParamValue: TypeAlias = str | int | float | bool

FeatureSpec: TypeAlias = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any]
"""A feature of an annotate request: a model name, (model, parameters), or {"model", "parameters"}."""

AnnotateItem: TypeAlias = tuple[ImageSource, Sequence[FeatureSpec]]
"""One image of an annotate request and the features (models) to run on it."""

Frames: TypeAlias = Sequence[ImageSource] | Sequence[Sequence[ImageSource]]
"""Still frames of one video clip, in order; or several such clips."""

UploadProgress: TypeAlias = Callable[[int, int], None]
"""Called with (bytes sent, bytes in all) as an upload goes out; from 0 again when it is retried."""

Shape = TypeVar("Shape", bound=BaseModel)

USER_AGENT = "vision-maas-client"

# Failures that happen before the server has answered anything: the request can be sent again.
# (ReadError and RemoteProtocolError count only when raised before the response headers, which
# the send loop ensures by reading the body in a separate step that is never retried.)
RETRYABLE_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.RemoteProtocolError,
)


_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", ".png"),
    (b"WEBP", 8, "image/webp", ".webp"),  # RIFF....WEBP
)


# ---- errors -----------------------------------------------------------------------------


def _foreign_code(status: int) -> str:
    """The code of an error answer that carries none of this API's (a proxy's page, say)."""
    return f"http_{status}"


class ApiError(Exception):
    """An error answer of the API: HTTP status, stable code, message and the response's headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Parse either error shape: v1 `{"error": {"code", "message"}}` or v2 `{"error": "message"}`.

        The code is the server's own (the body's, or its header's); an answer from something else
        (a proxy's page, say) gets `http_<status>`, never a guess at what the server would have said.
        """
        status = response.status_code
        code = response.headers.get(ERROR_CODE_HEADER) or _foreign_code(status)
        message = response.reason_phrase or f"HTTP {status}"
        try:
            body = response.json()
        except ValueError:  # not JSON, or not UTF-8
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
        elif isinstance(error, str):
            message = error
        elif response.text.strip():
            # Not our shape (a proxy's page, say): keep a short excerpt to show what answered.
            message = f"{message}: {response.text.strip()[:200]}"
        headers = dict(response.headers.items())
        return cls(status, code, message, headers, parse_retry_after(response.headers.get("retry-after")))

    @property
    def from_proxy(self) -> bool:
        """Whether something in front of the server answered (no error code of this API's)."""
        return self.code == _foreign_code(self.status)

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, code={self.code!r}, message={self.message!r})"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delay-seconds or an HTTP date); None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


# ---- retries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a request again: on 429/503, connection failures and a proxy's 500/502/504 page,
    with capped full-jitter backoff."""

    max_attempts: int = 5
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    max_retry_after: float = 60.0
    # None: only max_attempts bounds a call; else no attempt starts, and no sleep ends, past it.
    timeout_total: float | None = None
    retry_statuses: frozenset[int] = frozenset({429, 503})
    # A proxy's own error page with one of these (not this API's error, which carries its code): the
    # request was lost before the server answered, as when a replica dies mid-request and Serve's
    # HAProxy turns the dropped connection into a plain 500. Sent again, like a dropped connection;
    # the API's own 500 (code "internal") is not.
    proxy_statuses: frozenset[int] = frozenset({500, 502, 504})
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.backoff_base, self.backoff_cap, self.max_retry_after) < 0:
            raise ValueError("backoff_base, backoff_cap and max_retry_after must not be negative")
        if self.timeout_total is not None and self.timeout_total <= 0:
            raise ValueError("timeout_total must be positive (or None)")

    def backoff(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(failures - 1))]."""
        # The exponent is bounded so that a huge attempt count cannot overflow the float.
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(max(failures - 1, 0), 64))
        return self.rng.uniform(0.0, ceiling)

    def wait_for(self, retry_after: float | None, failures: int) -> float:
        """The server's Retry-After (capped at max_retry_after) when it sent one, else the backoff."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff(failures)


class _Attempts:
    """The attempts of one call: counts them and decides whether, and after how long, to try again."""

    def __init__(self, policy: RetryPolicy, *, retry: bool = True) -> None:
        self._policy = policy
        self._limit = policy.max_attempts if retry else 1
        self._made = 0
        self._deadline = None if policy.timeout_total is None else policy.clock() + policy.timeout_total

    def start(self, timeout: httpx.Timeout) -> httpx.Timeout:
        """Count an attempt; its timeout, shortened to what is left before the deadline."""
        self._made += 1
        if self._deadline is None:
            return timeout
        left = max(self._deadline - self._policy.clock(), 0.001)
        return httpx.Timeout(
            connect=_shorter(timeout.connect, left),
            read=_shorter(timeout.read, left),
            write=_shorter(timeout.write, left),
            pool=_shorter(timeout.pool, left),
        )

    def after_error(self, error: Exception) -> float | None:
        """The wait before retrying after a transport failure; None: raise it."""
        if not isinstance(error, RETRYABLE_ERRORS):
            return None
        return self._next(None)

    def after_drop(self) -> float | None:
        """The wait before reconnecting a stream that ended early or went quiet (a GET: always safe
        to send again); None: give up."""
        return self._next(None)

    def after_status(self, error: ApiError) -> float | None:
        """The wait before retrying after an error status; None: raise it."""
        lost = error.from_proxy and error.status in self._policy.proxy_statuses
        if error.status not in self._policy.retry_statuses and not lost:
            return None
        return self._next(error.retry_after)

    def _next(self, retry_after: float | None) -> float | None:
        if self._made >= self._limit:
            return None
        delay = self._policy.wait_for(retry_after, self._made)
        # Sleeping past the deadline only to be cut off would waste the caller's time.
        if self._deadline is not None and self._policy.clock() + delay >= self._deadline:
            return None
        return delay


def _shorter(value: float | None, limit: float) -> float:
    return limit if value is None else min(value, limit)


# ---- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """A request ready to send as many times as needed: the body is bytes, or multipart `files`
    whose file is seekable (httpx reads it again from its start on each attempt)."""

    method: str
    path: str
    params: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: Mapping[str, tuple[str, IO[bytes], str]] | None = None


def sniff_content_type(data: bytes) -> str:
    """The image media type from the magic bytes (JPEG, PNG, WebP); application/octet-stream otherwise."""
    for magic, offset, media_type, _ in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return media_type
    return "application/octet-stream"


def _extension(data: bytes) -> str:
    for magic, offset, _, extension in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return extension
    return ".bin"


def _load(images: Images) -> list[tuple[bytes, str]]:
    """Each image as (bytes, file name); a path is read now, so that a retry sends the same bytes."""
    sources: Sequence[ImageSource] = (
        [images] if isinstance(images, bytes | bytearray | str | os.PathLike) else list(images)
    )
    if not sources:
        raise ValueError("no images given")
    loaded: list[tuple[bytes, str]] = []
    for i, source in enumerate(sources):
        if isinstance(source, bytes | bytearray):
            data = bytes(source)
            loaded.append((data, f"image{i}{_extension(data)}"))
        else:
            path = Path(source)
            loaded.append((path.read_bytes(), path.name))
    return loaded


def _field(value: ParamValue) -> str:
    # JSON spelling for booleans: the server's validators read "true"/"false", not "True".
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _model_path(model: str) -> str:
    return f"/v1/models/{quote(model, safe='')}"


def _images_call(path: str, images: Images, parameters: Mapping[str, ParamValue]) -> _Call:
    """One image: the raw body with its sniffed type; several: multipart, one `image` part each."""
    loaded = _load(images)
    fields = {name: _field(value) for name, value in parameters.items()}
    if len(loaded) == 1:
        data = loaded[0][0]
        return _Call(
            "POST", path, params=fields or None, content=data, headers={"Content-Type": sniff_content_type(data)}
        )
    return _multipart_call(path, fields, [("image", name, data) for data, name in loaded])


def _multipart_call(path: str, fields: Mapping[str, str], parts: Sequence[tuple[str, str, bytes]]) -> _Call:
    """A multipart body of form fields and named file parts, encoded once into re-sendable bytes."""
    # httpx encodes the multipart body; reading it here turns it into bytes that can be re-sent.
    encoded = httpx.Request(
        "POST",
        "http://multipart.invalid/",
        data=dict(fields),
        files=[(part, (name, data, sniff_content_type(data))) for part, name, data in parts],
    )
    return _Call("POST", path, content=encoded.read(), headers={"Content-Type": encoded.headers["Content-Type"]})


def _predict_call(
    model: str, images: Images, parameters: Mapping[str, ParamValue], version: str | None = None
) -> _Call:
    path = _model_path(model) if version is None else _version_path(model, version)
    return _images_call(f"{path}:predict", images, parameters)


def _version_path(model: str, version: str) -> str:
    return f"{_model_path(model)}/versions/{quote(version, safe='')}"


def _explain_call(
    model: str, images: Images, target: str | None, target_index: int | None, alpha: float | None
) -> _Call:
    given = {"target": target, "target_index": target_index, "alpha": alpha}
    return _images_call(f"{_model_path(model)}:explain", images, {k: v for k, v in given.items() if v is not None})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json_call(path: str, body: Mapping[str, Any], accept: str | None = None) -> _Call:
    headers = {"Content-Type": "application/json"}
    if accept is not None:
        headers["Accept"] = accept
    return _Call("POST", path, content=json.dumps(body).encode(), headers=headers)


def _generate_call(
    model: str,
    num_images: int,
    seed: int | None,
    label: int | str | None,
    parameters: Mapping[str, Any],
    accept: str | None = None,
) -> _Call:
    body: dict[str, Any] = {"num_images": num_images, "parameters": dict(parameters)}
    # Absent rather than null: the server then picks them, and says which in its answer.
    if seed is not None:
        body["seed"] = seed
    if label is not None:
        body["label"] = label
    return _json_call(f"{_model_path(model)}:generate", body, accept)


def _is_clip_list(frames: Frames) -> bool:
    """Whether `frames` holds several clips (sequences of frames) rather than one clip's frames."""
    return bool(frames) and all(isinstance(f, list | tuple) for f in frames)


def _video_call(model: str, clips: Images | None, frames: Frames | None, parameters: Mapping[str, ParamValue]) -> _Call:
    """Encoded clips and clips given as still frames; the answer lists clips first, then frame clips."""
    if clips is None and frames is None:
        raise ValueError("give clips, frames, or both")
    loaded = _load(clips) if clips is not None else []
    groups: list[list[tuple[bytes, str]]] = []
    if frames is not None:
        listed: list[Any] = list(frames)
        for group in listed if _is_clip_list(frames) else [listed]:
            groups.append(_load(list(group)))
    path = f"{_model_path(model)}:predict"
    if len(groups) <= 1:
        # Multipart carries one clip of `frame` parts at most: the ingress adds it after the `video` parts.
        parts = [("video", name, data) for data, name in loaded]
        parts += [("frame", name, data) for group in groups for data, name in group]
        fields = {name: _field(value) for name, value in parameters.items()}
        return _multipart_call(path, fields, parts)
    instances: list[dict[str, Any]] = [{"b64": _b64(data)} for data, _ in loaded]
    instances += [{"frames": [_b64(data) for data, _ in group]} for group in groups]
    return _json_call(path, {"instances": instances, "parameters": dict(parameters)})


def _feature(spec: FeatureSpec) -> dict[str, Any]:
    """A feature in the API's form: {"model", "parameters"}."""
    if isinstance(spec, str):
        return {"model": spec, "parameters": {}}
    if isinstance(spec, tuple):
        model, parameters = spec
        return {"model": model, "parameters": dict(parameters)}
    if not isinstance(spec.get("model"), str):
        raise ValueError(f"a feature needs a model name: {spec!r}")
    return {"model": spec["model"], "parameters": dict(spec.get("parameters") or {})}


def _annotate_call(requests: Sequence[AnnotateItem]) -> _Call:
    if not requests:
        raise ValueError("no images given")
    items: list[dict[str, Any]] = []
    for image, features in requests:
        if isinstance(features, str):
            raise ValueError(f"features must be a list, not the string {features!r}")
        if not features:
            raise ValueError("every image needs at least one feature")
        ((data, _),) = _load(image)
        items.append({"image": {"b64": _b64(data)}, "features": [_feature(f) for f in features]})
    return _json_call("/v1/images:annotate", {"requests": items})


def _predict_json_call(model: str, images: Images, parameters: Mapping[str, Any] | None) -> _Call:
    instances = [{"b64": _b64(data)} for data, _ in _load(images)]
    return _json_call(f"{_model_path(model)}:predict", {"instances": instances, "parameters": dict(parameters or {})})


def _infer_call(model: str, images: Images, version: str | None) -> _Call:
    """Open Inference Protocol v2, binary extension: one BYTES input `image`, every output as binary."""
    loaded = _load(images)
    raw = pack_bytes([data for data, _ in loaded])
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": IMAGE_INPUT,
                    "shape": [len(loaded)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        separators=(",", ":"),
    ).encode()
    path = f"/v2/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{quote(version, safe='')}"
    return _Call(
        "POST",
        f"{path}/infer",
        content=head + raw,
        headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))},
    )


# ---- training and the model lifecycle: requests ------------------------------------------

DATASETS_PATH = "/v1/datasets"
JOBS_PATH = "/v1/training/jobs"
EVENT_STREAM = "text/event-stream"


class _Watched:
    """The archive as httpx reads it for the multipart body: every read reports the bytes sent."""

    def __init__(self, file: IO[bytes], size: int, progress: UploadProgress) -> None:
        self._file = file
        self._size = size
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if chunk:
            self._progress(self._file.tell(), self._size)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


def _upload_call(archive: Archive, progress: UploadProgress | None) -> _Call:
    """The archive as the multipart part `archive`, streamed from its file (never read whole)."""
    file: Any = archive.file if progress is None else _Watched(archive.file, archive.size, progress)
    return _Call("POST", DATASETS_PATH, files={"archive": (archive.name, file, archive.media_type)})


def _dataset_path(dataset_id: str) -> str:
    return f"{DATASETS_PATH}/{quote(dataset_id, safe='')}"


def _job_path(job_id: str) -> str:
    return f"{JOBS_PATH}/{quote(job_id, safe='')}"


def training_request(request: TrainingJobRequest | None = None, **fields: Any) -> TrainingJobRequest:
    """The job to start: `request` as given, or one built from `fields` (checked against the contract
    before anything is sent; pydantic's ValidationError, a ValueError, names what is wrong)."""
    if request is not None and fields:
        raise TypeError("give a TrainingJobRequest or its fields, not both")
    return request if request is not None else TrainingJobRequest(**fields)


def _train_call(request: TrainingJobRequest) -> _Call:
    return _json_call(JOBS_PATH, request.model_dump(mode="json"))


def _rollout_call(model: str, version: str, percent: int) -> _Call:
    body = RolloutRequest(version=version, percent=percent)
    return _json_call(f"{_model_path(model)}/rollout", body.model_dump(mode="json"))


def _events_call(job_id: str, last_id: str) -> _Call:
    headers = {"Accept": EVENT_STREAM, "Cache-Control": "no-cache"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    return _Call("GET", f"{_job_path(job_id)}/events", headers=headers)


class JobEvent(NamedTuple):
    """One event of a job's stream: `progress` (the job changed) or `done` (finished; the last)."""

    event: str
    job: TrainingJob


class _Following:
    """What both clients' `follow_job` share: the parser, the attempts since the last event, and
    which events to yield (a reconnect repeats the current state; it is not yielded twice)."""

    EVENTS = frozenset({"progress", "done"})

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.parser = EventParser()
        self.attempts = _Attempts(policy)
        self._last_id = ""
        self._last_data: str | None = None

    def call(self, job_id: str) -> _Call:
        """The request of the next connection (a new stream: a new parser; the last id is kept)."""
        self.parser = EventParser()
        return _events_call(job_id, self._last_id)

    def feed(self, line: str, response: httpx.Response) -> JobEvent | None:
        """The job event this line completes, if any and if it is news."""
        event = self.parser.feed(line)
        if event is None or event.event not in self.EVENTS:
            return None  # events of other types: left to newer clients
        self._last_id = event.id
        self.attempts = _Attempts(self.policy)  # the stream is alive: count failures afresh
        if event.event == "progress" and event.data == self._last_data:
            return None
        self._last_data = event.data
        try:
            return JobEvent(event.event, TrainingJob.model_validate_json(event.data))
        except ValidationError as exc:
            raise _invalid(response, f"malformed {event.event} event: {exc.errors()[0]['msg']}") from None

    def after_error(self, error: httpx.TransportError) -> float:
        """The wait before reconnecting after a failure (or a long silence); or raise the error."""
        if isinstance(error, httpx.ReadTimeout):
            return self.after_drop(error)
        delay = self.attempts.after_error(error)
        if delay is None:
            raise error
        return delay

    def after_drop(self, error: Exception | None = None) -> float:
        """The wait before reconnecting a stream that ended before its `done` event; or raise."""
        delay = self.attempts.after_drop()
        if delay is None:
            raise error or ApiError(0, "stream_ended", "the job's event stream kept ending before its done event")
        if self.parser.retry_ms is not None:  # the stream said how long to wait
            delay = min(self.parser.retry_ms / 1000.0, self.policy.max_retry_after)
        return delay


# ---- responses ----------------------------------------------------------------------------


def _invalid(response: httpx.Response, what: str) -> ApiError:
    return ApiError(response.status_code, "invalid_response", what, dict(response.headers.items()))


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:  # not JSON, or not UTF-8
        raise _invalid(response, "the server's answer is not JSON") from None
    if not isinstance(body, dict):
        raise _invalid(response, "the server's answer is not a JSON object")
    return body


class GeneratedPng(NamedTuple):
    """One generated image as PNG bytes, with the seed (and label) that reproduce it."""

    png: bytes
    seed: int
    label: str | None


def _generated_png(response: httpx.Response) -> GeneratedPng:
    media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "image/png":
        raise _invalid(response, f"expected an image/png answer, got {media or 'no content type'}")
    try:
        seed = int(response.headers["x-seed"])
    except (KeyError, ValueError):
        raise _invalid(response, "the PNG answer has no valid X-Seed header") from None
    return GeneratedPng(response.content, seed, response.headers.get("x-label"))


def _model_list(response: httpx.Response) -> list[dict[str, Any]]:
    models = _json_object(response).get("models")
    if not isinstance(models, list):
        raise _invalid(response, "the model list has no 'models' array")
    return models


def _parsed(response: httpx.Response, shape: type[Shape]) -> Shape:
    """The answer as the contract's `shape`; invalid_response when it is not one."""
    try:
        return shape.model_validate(_json_object(response))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _invalid(response, f"the answer is not a {shape.__name__}: {where}: {first['msg']}") from None


def _tensors(response: httpx.Response) -> dict[str, np.ndarray]:
    """The outputs of a v2 answer by name, from binary data or JSON `data`."""
    body = response.content
    length = response.headers.get(HEADER_LENGTH)
    try:
        size = len(body) if length is None else int(length)
        if not 0 < size <= len(body):
            raise ValueError(f"{HEADER_LENGTH} {size} is outside the body of {len(body)} bytes")
        head = json.loads(body[:size])
        binary = body[size:]
        outputs: dict[str, np.ndarray] = {}
        offset = 0
        for output in head["outputs"]:
            shape = [int(d) for d in output["shape"]]
            binary_size = (output.get("parameters") or {}).get("binary_data_size")
            if binary_size is None:
                outputs[output["name"]] = _tensor_from_json(output["datatype"], shape, output.get("data", []))
                continue
            chunk = binary[offset : offset + int(binary_size)]
            if len(chunk) != binary_size:
                raise ValueError(f"output {output['name']!r} is truncated")
            offset += len(chunk)
            outputs[output["name"]] = _tensor_from_bytes(output["datatype"], shape, chunk)
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise _invalid(response, f"malformed inference response: {exc}") from None
    return outputs


def _tensor_from_bytes(datatype: str, shape: list[int], chunk: bytes) -> np.ndarray:
    if datatype == "BYTES":
        items = unpack_bytes(chunk)
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    # A copy: frombuffer over bytes is read-only, and callers expect an ordinary array.
    return np.frombuffer(chunk, dtype=numpy_dtype(datatype)).reshape(shape).copy()


def _tensor_from_json(datatype: str, shape: list[int], data: list[Any]) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(len(data), dtype=object)
        array[:] = data
        return array.reshape(shape)
    return np.asarray(data, dtype=numpy_dtype(datatype)).reshape(shape)


def _rate_limit(response: httpx.Response) -> dict[str, str]:
    prefix = "x-ratelimit-"
    return {
        name.lower().removeprefix(prefix): value
        for name, value in response.headers.items()
        if name.lower().startswith(prefix)
    }


# ---- clients ------------------------------------------------------------------------------


class _Base:
    """What both clients share: configuration, headers, and the verdict on each response."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        retry: RetryPolicy | None,
    ) -> None:
        self.base_url = base_url
        self.retry = retry or RetryPolicy()
        self._timeout = httpx.Timeout(timeout)
        self._has_key = bool(api_key)
        # The last response's X-RateLimit-* headers, by lower-case suffix: limit, remaining, reset.
        self.last_rate_limit: dict[str, str] = {}

    @staticmethod
    def _headers(api_key: str | None) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def _verdict(self, response: httpx.Response, attempts: _Attempts) -> float | None:
        """None when the response is a success; the wait before retrying; or raise its ApiError."""
        self.last_rate_limit = _rate_limit(response)
        if response.is_success:
            return None
        return self._refusal(response, attempts)

    @staticmethod
    def _refusal(response: httpx.Response, attempts: _Attempts) -> float:
        """The wait before retrying an error answer; or raise its ApiError."""
        error = ApiError.from_response(response)
        delay = attempts.after_status(error)
        if delay is None:
            raise error
        return delay

    def __repr__(self) -> str:
        # The key is never shown, only whether there is one.
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={'***' if self._has_key else None})"


class VisionClient(_Base):
    """Synchronous client of the vision-maas HTTP API; use it as a context manager, or close() it."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retry)
        self._client = httpx.Client(
            base_url=base_url,
            headers=self._headers(api_key),
            timeout=self._timeout,
            transport=transport,
            limits=limits or httpx.Limits(),
        )

    def _send(self, call: _Call, *, retry: bool = True) -> httpx.Response:
        attempts = _Attempts(self.retry, retry=retry)
        while True:
            request = self._client.build_request(
                call.method,
                call.path,
                params=call.params,
                content=call.content,
                headers=call.headers,
                files=call.files,
                timeout=attempts.start(self._timeout),
            )
            try:
                # Streamed, so that an error raised here came before the response headers.
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise
            else:
                try:
                    response.read()
                finally:
                    response.close()
                delay = self._verdict(response, attempts)
                if delay is None:
                    return response
            self.retry.sleep(delay)

    def predict(
        self,
        model: str,
        images: Images,
        top_k: int | None = None,
        *,
        version: str | None = None,
        **parameters: ParamValue,
    ) -> dict[str, Any]:
        """Predict on one image (raw body) or several (multipart), any task; one prediction per image, in order.
        `version`: that version of a trained model only, whatever its rollout."""
        params = parameters if top_k is None else {"top_k": top_k, **parameters}
        return _json_object(self._send(_predict_call(model, images, params, version)))

    def predict_json(self, model: str, images: Images, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Predict through the JSON form: base64 instances plus shared parameters."""
        return _json_object(self._send(_predict_json_call(model, images, parameters)))

    def predict_video(
        self, model: str, clips: Images | None = None, frames: Frames | None = None, **parameters: ParamValue
    ) -> dict[str, Any]:
        """Classify video clips: encoded clips (MP4, WebM, GIF, ...) and/or clips given as still frames."""
        return _json_object(self._send(_video_call(model, clips, frames, parameters)))

    def generate(
        self,
        model: str,
        num_images: int = 1,
        seed: int | None = None,
        label: int | str | None = None,
        **parameters: Any,
    ) -> dict[str, Any]:
        """Generate images; the answer's `seed` reproduces them, its `images` hold base64 PNGs."""
        return _json_object(self._send(_generate_call(model, num_images, seed, label, parameters)))

    def generate_png(
        self, model: str, seed: int | None = None, label: int | str | None = None, **parameters: Any
    ) -> GeneratedPng:
        """Generate one image as raw PNG bytes (Accept: image/png), with its seed and label."""
        return _generated_png(self._send(_generate_call(model, 1, seed, label, parameters, accept="image/png")))

    def explain(
        self,
        model: str,
        images: Images,
        target: str | None = None,
        target_index: int | None = None,
        alpha: float | None = None,
    ) -> dict[str, Any]:
        """Explanation maps of a classifier's decision: one heatmap and overlay per image, in order."""
        return _json_object(self._send(_explain_call(model, images, target, target_index, alpha)))

    def annotate(self, requests: Sequence[AnnotateItem]) -> dict[str, Any]:
        """Several models on each image: [(image, [model | (model, params) | feature dict]), ...]."""
        return _json_object(self._send(_annotate_call(requests)))

    def models(self) -> list[dict[str, Any]]:
        """The catalogue entries this key may use."""
        return _model_list(self._send(_Call("GET", "/v1/models")))

    def model(self, name: str) -> dict[str, Any]:
        """One catalogue entry."""
        return _json_object(self._send(_Call("GET", _model_path(name))))

    def infer(self, model: str, images: Images, version: str | None = None) -> dict[str, np.ndarray]:
        """Open Inference Protocol v2 inference with binary tensors; every output as a numpy array."""
        return _tensors(self._send(_infer_call(model, images, version)))

    # ---- training and the model lifecycle (admin scope) ----

    def upload_dataset(
        self,
        path: str | os.PathLike[str],
        progress: UploadProgress | None = None,
        packing: PackProgress | None = None,
    ) -> Dataset:
        """Upload a data set: a folder of `<label>/<image>` (packed into a zip on the way) or a zip,
        tar or tar.gz archive, streamed; `progress(sent, total)` follows the bytes, `packing(done, total)`
        the folder's files."""
        with open_archive(path, packing) as archive:
            return _parsed(self._send(_upload_call(archive, progress)), Dataset)

    def datasets(self) -> list[Dataset]:
        """The stored data sets."""
        return _parsed(self._send(_Call("GET", DATASETS_PATH)), DatasetList).datasets

    def dataset(self, dataset_id: str) -> Dataset:
        """One stored data set."""
        return _parsed(self._send(_Call("GET", _dataset_path(dataset_id))), Dataset)

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a stored data set."""
        self._send(_Call("DELETE", _dataset_path(dataset_id)))

    def train(self, request: TrainingJobRequest | None = None, **fields: Any) -> TrainingJob:
        """Start a training job (a TrainingJobRequest, or its fields as keywords); the job, queued."""
        return _parsed(self._send(_train_call(training_request(request, **fields))), TrainingJob)

    def jobs(self) -> list[TrainingJob]:
        """The training jobs, oldest first."""
        return _parsed(self._send(_Call("GET", JOBS_PATH)), TrainingJobList).jobs

    def job(self, job_id: str) -> TrainingJob:
        """One training job: status, progress and, once finished, its report."""
        return _parsed(self._send(_Call("GET", _job_path(job_id))), TrainingJob)

    def cancel_job(self, job_id: str) -> TrainingJob:
        """Cancel a queued or running job (a finished one: ApiError 409)."""
        return _parsed(self._send(_Call("DELETE", _job_path(job_id))), TrainingJob)

    def follow_job(self, job_id: str) -> Iterator[JobEvent]:
        """The job's events as they happen: `progress` each time it changes, then one `done`, then the
        end. A dropped or silent stream is reconnected (the retry policy bounds the tries in a row)."""
        following = _Following(self.retry)
        while True:
            call = following.call(job_id)
            timeout = following.attempts.start(self._timeout)
            try:
                with self._client.stream(call.method, call.path, headers=call.headers, timeout=timeout) as response:
                    self.last_rate_limit = _rate_limit(response)
                    if not response.is_success:
                        response.read()
                        delay = self._refusal(response, following.attempts)
                    else:
                        for line in response.iter_lines():
                            event = following.feed(line, response)
                            if event is not None:
                                yield event
                                if event.event == "done":
                                    return
                        delay = following.after_drop()
            except httpx.TransportError as exc:
                delay = following.after_error(exc)
            self.retry.sleep(delay)

    def versions(self, model: str) -> list[ModelVersion]:
        """A trained model's versions, each with its report, rollout state and share of traffic."""
        return _parsed(self._send(_Call("GET", f"{_model_path(model)}/versions")), ModelVersionList).versions

    def rollout_state(self, model: str) -> Rollout:
        """Which versions answer the model's :predict: the stable one, and a canary with its share."""
        return _parsed(self._send(_Call("GET", f"{_model_path(model)}/rollout")), Rollout)

    def rollout(self, model: str, version: str, percent: int) -> Rollout:
        """Send `percent` of the model's :predict to `version` (a canary); 100 promotes it."""
        return _parsed(self._send(_rollout_call(model, version, percent)), Rollout)

    def rollback(self, model: str) -> Rollout:
        """Drop the canary; without one, return to the previous stable version (ApiError 409 when there is none)."""
        return _parsed(self._send(_Call("POST", f"{_model_path(model)}/rollback")), Rollout)

    def healthy(self) -> bool:
        """Whether the ingress answers its liveness route (one attempt, no retries)."""
        try:
            self._send(_Call("GET", "/healthz"), retry=False)
        except (ApiError, httpx.HTTPError):
            return False
        return True

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncVisionClient(_Base):
    """Asynchronous client with VisionClient's API; use it with `async with`, or aclose() it."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retry)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=self._headers(api_key),
            timeout=self._timeout,
            transport=transport,
            limits=limits or httpx.Limits(),
        )

    async def _send(self, call: _Call, *, retry: bool = True) -> httpx.Response:
        attempts = _Attempts(self.retry, retry=retry)
        while True:
            request = self._client.build_request(
                call.method,
                call.path,
                params=call.params,
                content=call.content,
                headers=call.headers,
                files=call.files,
                timeout=attempts.start(self._timeout),
            )
            try:
                # Streamed, so that an error raised here came before the response headers.
                response = await self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise
            else:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                delay = self._verdict(response, attempts)
                if delay is None:
                    return response
            await self.retry.async_sleep(delay)

    async def predict(
        self,
        model: str,
        images: Images,
        top_k: int | None = None,
        *,
        version: str | None = None,
        **parameters: ParamValue,
    ) -> dict[str, Any]:
        """Predict on one image (raw body) or several (multipart), any task; one prediction per image, in order.
        `version`: that version of a trained model only, whatever its rollout."""
        params = parameters if top_k is None else {"top_k": top_k, **parameters}
        return _json_object(await self._send(_predict_call(model, images, params, version)))

    async def predict_json(
        self, model: str, images: Images, parameters: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Predict through the JSON form: base64 instances plus shared parameters."""
        return _json_object(await self._send(_predict_json_call(model, images, parameters)))

    async def predict_video(
        self, model: str, clips: Images | None = None, frames: Frames | None = None, **parameters: ParamValue
    ) -> dict[str, Any]:
        """Classify video clips: encoded clips (MP4, WebM, GIF, ...) and/or clips given as still frames."""
        return _json_object(await self._send(_video_call(model, clips, frames, parameters)))

    async def generate(
        self,
        model: str,
        num_images: int = 1,
        seed: int | None = None,
        label: int | str | None = None,
        **parameters: Any,
    ) -> dict[str, Any]:
        """Generate images; the answer's `seed` reproduces them, its `images` hold base64 PNGs."""
        return _json_object(await self._send(_generate_call(model, num_images, seed, label, parameters)))

    async def generate_png(
        self, model: str, seed: int | None = None, label: int | str | None = None, **parameters: Any
    ) -> GeneratedPng:
        """Generate one image as raw PNG bytes (Accept: image/png), with its seed and label."""
        return _generated_png(await self._send(_generate_call(model, 1, seed, label, parameters, accept="image/png")))

    async def explain(
        self,
        model: str,
        images: Images,
        target: str | None = None,
        target_index: int | None = None,
        alpha: float | None = None,
    ) -> dict[str, Any]:
        """Explanation maps of a classifier's decision: one heatmap and overlay per image, in order."""
        return _json_object(await self._send(_explain_call(model, images, target, target_index, alpha)))

    async def annotate(self, requests: Sequence[AnnotateItem]) -> dict[str, Any]:
        """Several models on each image: [(image, [model | (model, params) | feature dict]), ...]."""
        return _json_object(await self._send(_annotate_call(requests)))

    async def models(self) -> list[dict[str, Any]]:
        """The catalogue entries this key may use."""
        return _model_list(await self._send(_Call("GET", "/v1/models")))

    async def model(self, name: str) -> dict[str, Any]:
        """One catalogue entry."""
        return _json_object(await self._send(_Call("GET", _model_path(name))))

    async def infer(self, model: str, images: Images, version: str | None = None) -> dict[str, np.ndarray]:
        """Open Inference Protocol v2 inference with binary tensors; every output as a numpy array."""
        return _tensors(await self._send(_infer_call(model, images, version)))

    # ---- training and the model lifecycle (admin scope) ----

    async def upload_dataset(
        self,
        path: str | os.PathLike[str],
        progress: UploadProgress | None = None,
        packing: PackProgress | None = None,
    ) -> Dataset:
        """Upload a data set: a folder of `<label>/<image>` (packed into a zip on the way) or a zip,
        tar or tar.gz archive, streamed; `progress(sent, total)` follows the bytes, `packing(done, total)`
        the folder's files."""
        with open_archive(path, packing) as archive:
            return _parsed(await self._send(_upload_call(archive, progress)), Dataset)

    async def datasets(self) -> list[Dataset]:
        """The stored data sets."""
        return _parsed(await self._send(_Call("GET", DATASETS_PATH)), DatasetList).datasets

    async def dataset(self, dataset_id: str) -> Dataset:
        """One stored data set."""
        return _parsed(await self._send(_Call("GET", _dataset_path(dataset_id))), Dataset)

    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete a stored data set."""
        await self._send(_Call("DELETE", _dataset_path(dataset_id)))

    async def train(self, request: TrainingJobRequest | None = None, **fields: Any) -> TrainingJob:
        """Start a training job (a TrainingJobRequest, or its fields as keywords); the job, queued."""
        return _parsed(await self._send(_train_call(training_request(request, **fields))), TrainingJob)

    async def jobs(self) -> list[TrainingJob]:
        """The training jobs, oldest first."""
        return _parsed(await self._send(_Call("GET", JOBS_PATH)), TrainingJobList).jobs

    async def job(self, job_id: str) -> TrainingJob:
        """One training job: status, progress and, once finished, its report."""
        return _parsed(await self._send(_Call("GET", _job_path(job_id))), TrainingJob)

    async def cancel_job(self, job_id: str) -> TrainingJob:
        """Cancel a queued or running job (a finished one: ApiError 409)."""
        return _parsed(await self._send(_Call("DELETE", _job_path(job_id))), TrainingJob)

    async def follow_job(self, job_id: str) -> AsyncIterator[JobEvent]:
        """The job's events as they happen: `progress` each time it changes, then one `done`, then the
        end. A dropped or silent stream is reconnected (the retry policy bounds the tries in a row)."""
        following = _Following(self.retry)
        while True:
            call = following.call(job_id)
            timeout = following.attempts.start(self._timeout)
            try:
                async with self._client.stream(
                    call.method, call.path, headers=call.headers, timeout=timeout
                ) as response:
                    self.last_rate_limit = _rate_limit(response)
                    if not response.is_success:
                        await response.aread()
                        delay = self._refusal(response, following.attempts)
                    else:
                        async for line in response.aiter_lines():
                            event = following.feed(line, response)
                            if event is not None:
                                yield event
                                if event.event == "done":
                                    return
                        delay = following.after_drop()
            except httpx.TransportError as exc:
                delay = following.after_error(exc)
            await self.retry.async_sleep(delay)

    async def versions(self, model: str) -> list[ModelVersion]:
        """A trained model's versions, each with its report, rollout state and share of traffic."""
        return _parsed(await self._send(_Call("GET", f"{_model_path(model)}/versions")), ModelVersionList).versions

    async def rollout_state(self, model: str) -> Rollout:
        """Which versions answer the model's :predict: the stable one, and a canary with its share."""
        return _parsed(await self._send(_Call("GET", f"{_model_path(model)}/rollout")), Rollout)

    async def rollout(self, model: str, version: str, percent: int) -> Rollout:
        """Send `percent` of the model's :predict to `version` (a canary); 100 promotes it."""
        return _parsed(await self._send(_rollout_call(model, version, percent)), Rollout)

    async def rollback(self, model: str) -> Rollout:
        """Drop the canary; without one, return to the previous stable version (ApiError 409 when there is none)."""
        return _parsed(await self._send(_Call("POST", f"{_model_path(model)}/rollback")), Rollout)

    async def healthy(self) -> bool:
        """Whether the ingress answers its liveness route (one attempt, no retries)."""
        try:
            await self._send(_Call("GET", "/healthz"), retry=False)
        except (ApiError, httpx.HTTPError):
            return False
        return True

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
