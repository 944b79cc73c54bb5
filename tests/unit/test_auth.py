"""The API key store and the rate limiter, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deployments.auth import KeyStore, KeyStoreError, Limits, QuotaArgs, RateLimitArgs, hash_key, main


def _store(*tenants: dict[str, Any]) -> str:
    return json.dumps({"tenants": list(tenants)})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_key_is_found_by_its_hash_when_stored_hashed() -> None:
    store = KeyStore.parse(_store({"name": "acme", "key_sha256": [hash_key("secret-1")], "models": ["digits_cnn"]}))
    tenant = store.authenticate("secret-1")
    assert tenant is not None
    assert tenant.name == "acme"
    assert tenant.may_use("digits_cnn")
    assert not tenant.may_use("resnet18")
    assert store.authenticate("secret-2") is None


def test_tenant_without_models_may_use_every_model() -> None:
    tenant = KeyStore.parse(_store({"name": "ops", "key_sha256": [hash_key("k")]})).authenticate("k")
    assert tenant is not None
    assert tenant.may_use("anything")


@pytest.mark.parametrize(
    "text",
    [
        "tenants: [{name: a, key_sha256: [nothex]}]",
        "tenants: [{name: a, key_sha256: []}]",
        "tenants: [{name: a, key_sha256: ['" + "a" * 64 + "'], colour: red}]",
        "{not yaml",
        _store({"name": "a", "key_sha256": ["b" * 64]}, {"name": "a", "key_sha256": ["c" * 64]}),
        _store({"name": "a", "key_sha256": ["b" * 64]}, {"name": "z", "key_sha256": ["b" * 64]}),
    ],
)
def test_malformed_key_store_is_refused_when_loading(text: str) -> None:
    with pytest.raises(KeyStoreError):
        KeyStore.parse(text)


def test_load_without_any_source_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISION_MAAS_API_KEYS", raising=False)
    with pytest.raises(KeyStoreError, match="VISION_MAAS_API_KEYS"):
        KeyStore.load(None, "VISION_MAAS_API_KEYS")


def test_load_reads_the_environment_when_no_file_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_MAAS_API_KEYS", _store({"name": "env", "key_sha256": [hash_key("from-env")]}))
    assert KeyStore.load(None, "VISION_MAAS_API_KEYS").authenticate("from-env") is not None


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limits = Limits(clock)
    rate = RateLimitArgs(requests_per_second=2, burst=3)
    decisions = [limits.acquire("a", rate, None) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after_s == 1
    assert decisions[3].headers()["Retry-After"] == "1"
    clock.now += 0.5
    assert limits.acquire("a", rate, None).allowed
    assert not limits.acquire("a", rate, None).allowed


def test_tenants_have_separate_buckets() -> None:
    limits = Limits(Clock())
    rate = RateLimitArgs(requests_per_second=1, burst=1)
    assert limits.acquire("a", rate, None).allowed
    assert not limits.acquire("a", rate, None).allowed
    assert limits.acquire("b", rate, None).allowed


def test_quota_resets_when_the_window_ends() -> None:
    clock = Clock()
    limits = Limits(clock)
    quota = QuotaArgs(requests=2, window_s=60)
    assert [limits.acquire("q", None, quota).allowed for _ in range(3)] == [True, True, False]
    refused = limits.acquire("q", None, quota)
    assert refused.retry_after_s == refused.reset_s > 0
    clock.now += 60
    assert limits.acquire("q", None, quota).allowed


def test_refused_requests_cost_nothing() -> None:
    limits = Limits(Clock())
    rate = RateLimitArgs(requests_per_second=100, burst=100)
    quota = QuotaArgs(requests=1, window_s=60)
    assert limits.acquire("t", rate, quota).allowed
    assert not limits.acquire("t", rate, quota).allowed
    # The bucket was not charged for the request the quota refused.
    assert limits.acquire("t", rate, None).remaining == 98


def test_new_key_prints_the_key_once_and_stores_only_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-key", "--tenant", "acme", "--models", "digits_cnn", "--rate", "5"]) == 0
    out, err = capsys.readouterr()
    key = err.strip().splitlines()[-1].removeprefix("# ").strip()
    assert key.startswith("vmk_")
    assert key not in out
    store = KeyStore.parse(out)
    tenant = store.authenticate(key)
    assert tenant is not None
    assert tenant.rate_limit == RateLimitArgs(requests_per_second=5, burst=10)
