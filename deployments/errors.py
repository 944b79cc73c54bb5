"""Domain errors of the HTTP API; each documents its status, one handler maps them all.

Model-layer errors (models.images, models.weights) know nothing of HTTP; their statuses are
mapped to API errors by MODEL_ERRORS below.
"""

from __future__ import annotations

from pydantic import ValidationError

from models.images import CorruptImage, ImageError, ImageTooLarge, UnsupportedImageFormat


class ServingError(Exception):
    """Base of API errors: `status_code` and a stable machine-readable `code`."""

    status_code = 500
    code = "internal"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServingError):
    """400: the request cannot be parsed (malformed JSON, multipart, base64, tensor data)."""

    status_code = 400
    code = "bad_request"


class InvalidImage(ServingError):
    """400: the image bytes claim an allowed format but cannot be decoded."""

    status_code = 400
    code = "invalid_image"


class Unauthorized(ServingError):
    """401: no API key, or one that is not valid; sent with WWW-Authenticate."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ServingError):
    """403: the API key may not use this model."""

    status_code = 403
    code = "forbidden"


class TooManyRequests(ServingError):
    """429: the tenant is over its rate limit or quota; retry after `Retry-After` seconds."""

    status_code = 429
    code = "rate_limited"


class ModelNotFound(ServingError):
    """404: no configured model has this name."""

    status_code = 404
    code = "model_not_found"


class NotFound(ServingError):
    """404: no such record (a training job, a data set)."""

    status_code = 404
    code = "not_found"


class Conflict(ServingError):
    """409: the request contradicts what exists (a configured model's name, a job that has finished)."""

    status_code = 409
    code = "conflict"


class RouteNotSupported(ServingError):
    """404: the model exists but its task has no such route (e.g. :generate on a classifier)."""

    status_code = 404
    code = "route_not_supported"


class RequestTimeout(ServingError):
    """408: the request did not finish within the configured timeout."""

    status_code = 408
    code = "timeout"


class NotAcceptable(ServingError):
    """406: the response cannot be given in the media type the Accept header asks for."""

    status_code = 406
    code = "not_acceptable"


class PayloadTooLarge(ServingError):
    """413: the body, an image's bytes or its pixel count exceeds a limit."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServingError):
    """415: the body's content type or an image's format is not accepted."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidParameters(ServingError):
    """422: well-formed request whose values are invalid (unknown parameter, top_k < 1, wrong shape)."""

    status_code = 422
    code = "invalid_parameters"


class Unavailable(ServingError):
    """503: the model's replica died or is restarting; retry after `Retry-After` seconds."""

    status_code = 503
    code = "unavailable"


class Overloaded(ServingError):
    """503: the model's queue is full (backpressure); retry after `Retry-After` seconds."""

    status_code = 503
    code = "overloaded"


# The API error of each model-layer error (models/ never imports this package); most specific first.
MODEL_ERRORS: dict[type[Exception], type[ServingError]] = {
    ImageTooLarge: PayloadTooLarge,
    UnsupportedImageFormat: UnsupportedMediaType,
    CorruptImage: InvalidImage,
    ImageError: InvalidImage,
}


def as_serving_error(exc: BaseException) -> ServingError | None:
    """The API error for a known failure, unwrapping Ray's RayTaskError; None for a bug."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    if isinstance(exc, ServingError):
        return exc
    for kind, api_error in MODEL_ERRORS.items():
        if isinstance(exc, kind):
            return api_error(str(exc))
    return None


def describe_validation_error(exc: ValidationError) -> str:
    """The first pydantic error as `where: what`, safe to show to the client."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])
