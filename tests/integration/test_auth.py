"""API keys, per-model permissions, rate limits and quotas on a real Serve deployment."""

from __future__ import annotations

import json
import secrets
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from deployments.auth import hash_key
from tests.integration.conftest import CORE_MODELS, MAIN_APP, ServeCluster, default_app_config
from tests.integration.test_observability import access_records, serve_log_lines, session_logs

KEYS = {name: "vmk_" + secrets.token_urlsafe(32) for name in ("admin", "digits", "limited", "quota")}


@pytest.fixture(scope="module")
def secured(cluster: ServeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = {
        "tenants": [
            {"name": "admin", "key_sha256": [hash_key(KEYS["admin"])]},
            {"name": "digits", "key_sha256": [hash_key(KEYS["digits"])], "models": ["digits_cnn"]},
            {
                "name": "limited",
                "key_sha256": [hash_key(KEYS["limited"])],
                "rate_limit": {"requests_per_second": 0.2, "burst": 3},
            },
            {"name": "quota", "key_sha256": [hash_key(KEYS["quota"])], "quota": {"requests": 2, "window_s": 3600}},
        ]
    }
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    keys_file.write_text(json.dumps(store))
    app = default_app_config(only=CORE_MODELS)
    app["route_prefix"] = "/secured"
    app["args"]["auth"] = {"enabled": True, "keys_file": str(keys_file)}
    main = cluster.apps[MAIN_APP]
    cluster.deploy({MAIN_APP: main, "secured": app})
    yield f"{cluster.url}/secured"
    cluster.deploy({MAIN_APP: main})


def _predict(url: str, png: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/digits_cnn:predict",
        content=png,
        headers={"Content-Type": "image/png", **headers},
        timeout=60.0,
    )


def test_missing_key_is_401_with_www_authenticate(secured: str, digit_pngs: list[tuple[bytes, int]]) -> None:
    response = _predict(secured, digit_pngs[0][0])
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="vision-maas"'
    assert response.json()["error"]["code"] == "unauthorized"


def test_bad_key_is_401_and_never_echoed(secured: str, digit_pngs: list[tuple[bytes, int]]) -> None:
    bad = "vmk_" + secrets.token_urlsafe(32)
    response = _predict(secured, digit_pngs[0][0], Authorization=f"Bearer {bad}")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert bad not in response.text


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_valid_key_is_accepted_in_either_header(secured: str, digit_pngs: list[tuple[bytes, int]], header: str) -> None:
    value = f"Bearer {KEYS['admin']}" if header == "Authorization" else KEYS["admin"]
    png, label = digit_pngs[0]
    response = _predict(secured, png, **{header: value})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["labels"][0]["label"] == str(label)


def test_key_without_the_model_is_403(secured: str, photo_jpeg: bytes) -> None:
    headers = {"Authorization": f"Bearer {KEYS['digits']}", "Content-Type": "image/jpeg"}
    response = httpx.post(f"{secured}/v1/models/resnet18:predict", content=photo_jpeg, headers=headers, timeout=60)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    listed = httpx.get(f"{secured}/v1/models", headers=headers, timeout=60).json()["models"]
    assert [m["name"] for m in listed] == ["digits_cnn"]


def test_v2_routes_need_a_key_but_health_does_not(secured: str) -> None:
    assert httpx.get(f"{secured}/v2/models/digits_cnn", timeout=30).status_code == 401
    auth = {"X-API-Key": KEYS["admin"]}
    assert httpx.get(f"{secured}/v2/models/digits_cnn", headers=auth, timeout=30).status_code == 200
    assert httpx.get(f"{secured}/v2/health/live", timeout=30).status_code == 200
    assert httpx.get(f"{secured}/healthz", timeout=30).status_code == 200


# Every route that takes a body: (path, content type).
BODY_ROUTES = [
    ("/v1/models/digits_cnn:predict", "image/png"),
    ("/v1/models/digits_cnn:generate", "application/json"),
    ("/v1/models/digits_cnn:explain", "image/png"),
    ("/v1/images:annotate", "application/json"),
    ("/v2/models/digits_cnn/infer", "application/json"),
    ("/v2/models/digits_cnn/versions/{version}/infer", "application/json"),
]


def _status_of_headers_only(url: str, path: str, content_type: str, declared: int) -> int:
    """The status a route answers to a request whose body never comes: only the headers are
    sent, declaring `declared` bytes. A route that read the body first would wait, not answer."""
    parts = urlsplit(url)
    head = (
        f"POST {parts.path}{path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(head.encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


@pytest.mark.parametrize(("path", "content_type"), BODY_ROUTES)
def test_every_body_route_checks_the_key_before_it_reads_the_body(secured: str, path: str, content_type: str) -> None:
    metadata = httpx.get(f"{secured}/v2/models/digits_cnn", headers={"X-API-Key": KEYS["admin"]}, timeout=30)
    path = path.format(version=metadata.json()["versions"][0])
    # Within the body limit but never sent: answered at once, so nothing was read.
    assert _status_of_headers_only(secured, path, content_type, 1 << 20) == 401
    # Over the body limit (32 MiB): still the key first, not 413 to an anonymous caller.
    assert _status_of_headers_only(secured, path, content_type, 64 << 20) == 401


def test_tenant_over_its_rate_limit_gets_429_and_others_are_unaffected(
    secured: str, digit_pngs: list[tuple[bytes, int]]
) -> None:
    png = digit_pngs[0][0]
    limited = {"Authorization": f"Bearer {KEYS['limited']}"}
    statuses = []
    responses = []
    for _ in range(5):
        response = _predict(secured, png, **limited)
        statuses.append(response.status_code)
        responses.append(response)
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert "X-RateLimit-Reset" in refused.headers
    assert responses[0].headers["X-RateLimit-Remaining"] == "2"
    # Keyed on the credential, not the client address: another tenant from the same IP passes.
    assert _predict(secured, png, Authorization=f"Bearer {KEYS['admin']}").status_code == 200


def test_tenant_over_its_quota_gets_429_until_the_window_ends(
    secured: str, digit_pngs: list[tuple[bytes, int]]
) -> None:
    quota = {"X-API-Key": KEYS["quota"]}
    statuses = [_predict(secured, digit_pngs[0][0], **quota).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = _predict(secured, digit_pngs[0][0], **quota)
    assert int(refused.headers["Retry-After"]) > 60


def key_material(key: str) -> list[str]:
    """Every form of `key` that would let a reader use or look up the key: itself, its secret part
    (no `vmk_` prefix), a 12-character prefix of that part, and the sha256 the key store holds."""
    secret = key.removeprefix("vmk_")
    return [key, secret, secret[:12], hash_key(key)]


def test_access_log_records_keyed_requests_without_any_key_material(
    secured: str, digit_pngs: list[tuple[bytes, int]]
) -> None:
    bad = "vmk_" + secrets.token_urlsafe(32)
    sent = {
        f"auth-ok-{uuid.uuid4()}": (f"Bearer {KEYS['admin']}", 200, None),
        f"auth-bad-{uuid.uuid4()}": (f"Bearer {bad}", 401, "unauthorized"),
    }
    for request_id, (authorization, status, _) in sent.items():
        response = _predict(secured, digit_pngs[0][0], Authorization=authorization, **{"X-Request-ID": request_id})
        assert response.status_code == status

    # The requests were logged: one access line each, with what an operator needs.
    for request_id, (_, status, error) in sent.items():
        _, records = serve_log_lines(request_id, lambda rs: bool(access_records(rs)))
        access = access_records(records)
        assert len(access) == 1, records
        line = access[0]
        assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/models/{model}:predict", status)
        assert (line["request_id"], line["model"], line["error"]) == (request_id, "digits_cnn", error)

    # ...and no file of this cluster's logs holds any form of any key, accepted or refused.
    files = [path for path in session_logs().rglob("*") if path.is_file() and path.stat().st_size < 50_000_000]
    assert any(path.name.startswith("replica_secured_Ingress") for path in files)
    for path in files:
        text = path.read_bytes()
        for key in [*KEYS.values(), bad]:
            for material in key_material(key):
                assert material.encode() not in text, path.name
