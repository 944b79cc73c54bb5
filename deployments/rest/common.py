"""What every route module shares: the caller's credential and the statuses of the inference routes."""

import importlib.metadata

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

SERVER_NAME = "vision-maas"
SERVER_VERSION = importlib.metadata.version(SERVER_NAME)  # pyproject.toml's, as installed

# The statuses of the routes that take images or tensors (:predict, :explain, /v2 infer).
INFER_ERRORS = (400, 401, 403, 404, 408, 413, 415, 422, 429, 503)

_BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, as a header.")


async def credential(
    bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
    api_key: str | None = Security(_API_KEY),
) -> str | None:
    """The API key of the request, from Authorization: Bearer or X-API-Key."""
    return bearer.credentials if bearer is not None else api_key


# A route's `key: str | None = CREDENTIAL`; the gateway decides what the key may do.
CREDENTIAL = Depends(credential)


async def request_credential(request: Request) -> str | None:
    """`credential` of a request, for a route whose parameters FastAPI does not solve."""
    return await credential(await _BEARER(request), await _API_KEY(request))
