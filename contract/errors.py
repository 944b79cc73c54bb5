"""How an error answer carries its code, for the server and the client alike."""

from __future__ import annotations

from typing import Any

# Every error answer names its code here too: a v2 body is only {"error": message}, so without
# the header a v2 client could tell model_not_found from route_not_supported only by guessing.
ERROR_CODE_HEADER = "X-Error-Code"


def error_payload(path: str, code: str, message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of an error answer: /v2 in the protocol's own shape, everything else in ours."""
    body: dict[str, Any] = (
        {"error": message} if path.startswith("/v2") else {"error": {"code": code, "message": message}}
    )
    return body, {ERROR_CODE_HEADER: code}
