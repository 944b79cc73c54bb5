"""API keys and per-tenant rate limits and quotas.

Keys are stored only as sha256 hashes (they are random 256-bit tokens, not passwords, so a
fast hash is the right tool), loaded from a YAML/JSON file or an environment variable (a
Kubernetes Secret). Each tenant lists the models it may use, a token-bucket rate limit and
a request quota per window. Limits are counted by one RateLimiter deployment, so they hold
however many ingress replicas run; each replica leases a tenant's requests from it a few at a
time (deployments.leases, which states what that costs in precision).

    python -m deployments.auth new-key --tenant acme --models digits_cnn --rate 10 --burst 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

KEY_PREFIX = "vmk_"
ALL_MODELS = "*"


class KeyStoreError(ValueError):
    """The key store cannot be loaded; the message never contains key material."""


class RateLimitArgs(BaseModel):
    """Token bucket: `requests_per_second` sustained, bursts up to `burst`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class QuotaArgs(BaseModel):
    """At most `requests` per `window_s` seconds (fixed windows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests: int = Field(ge=1)
    window_s: int = Field(86_400, ge=1)


class TenantArgs(BaseModel):
    """One tenant of the key store file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    key_sha256: list[str] = Field(min_length=1, description="sha256 hex of each of the tenant's keys")
    models: list[str] = Field(default_factory=lambda: [ALL_MODELS])
    rate_limit: RateLimitArgs | None = None
    quota: QuotaArgs | None = None
    admin: bool = Field(False, description="May upload data sets, train models and roll versions out.")


class KeyStoreArgs(BaseModel):
    """The key store file: `{"tenants": [...]}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tenants: list[TenantArgs]


@dataclass(frozen=True)
class Tenant:
    """An authenticated caller and what it may do."""

    name: str
    models: frozenset[str]
    rate_limit: RateLimitArgs | None
    quota: QuotaArgs | None
    admin: bool = False

    def may_use(self, model: str) -> bool:
        """True when this tenant may call `model`."""
        return ALL_MODELS in self.models or model in self.models


def hash_key(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyStore:
    """Key hash -> tenant."""

    by_hash: dict[str, Tenant] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> KeyStore:
        """Parse the YAML or JSON text of a key store; errors name tenants, never keys."""
        try:
            raw = yaml.safe_load(text)
            store = KeyStoreArgs.model_validate(raw)
        except (yaml.YAMLError, ValidationError) as exc:
            raise KeyStoreError(f"invalid API key store: {_describe(exc)}") from None
        by_hash: dict[str, Tenant] = {}
        names: set[str] = set()
        for entry in store.tenants:
            if entry.name in names:
                raise KeyStoreError(f"tenant {entry.name!r} is listed twice")
            names.add(entry.name)
            tenant = Tenant(entry.name, frozenset(entry.models), entry.rate_limit, entry.quota, entry.admin)
            for digest in entry.key_sha256:
                digest = digest.lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise KeyStoreError(f"tenant {entry.name!r}: key_sha256 entries must be 64 hex digits")
                if digest in by_hash:
                    raise KeyStoreError(f"tenant {entry.name!r} shares a key with {by_hash[digest].name!r}")
                by_hash[digest] = tenant
        return cls(by_hash)

    @classmethod
    def load(cls, keys_file: str | None, keys_env: str | None) -> KeyStore:
        """Load from `keys_file`, else from the environment variable `keys_env`."""
        if keys_file:
            try:
                return cls.parse(Path(keys_file).read_text())
            except OSError as exc:
                raise KeyStoreError(f"cannot read the API key file ({exc.strerror})") from None
        if keys_env and os.environ.get(keys_env):
            return cls.parse(os.environ[keys_env])
        raise KeyStoreError(
            f"authentication is on but no API keys are configured: set auth.keys_file or the {keys_env} variable"
        )

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant owning `key`, or None."""
        return self.by_hash.get(hash_key(key))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return type(exc).__name__


@dataclass(frozen=True)
class Decision:
    """A rate-limit verdict and the X-RateLimit-* figures to send back."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int

    def headers(self) -> dict[str, str]:
        """X-RateLimit-* response headers (plus Retry-After when refused)."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


# How long a lease's requests stay usable; a lease of a quota ends no later than its window.
LEASE_TTL_S = 2.0


@dataclass(frozen=True)
class Lease:
    """Up to `want` requests taken at once (deployments.leases), and the figures after the grant.

    `granted` requests stay usable for `ttl_s` seconds, counted from when the lease was asked
    for; `window` is the quota window they were counted in (0 without a quota). `limit`,
    `remaining` and `reset_s` are the X-RateLimit-* figures of the tightest limit after the
    grant; `wait_s` is how long until one more request could be granted (0.0: now)."""

    granted: int
    ttl_s: float
    window: int
    limit: int
    remaining: int
    reset_s: int
    wait_s: float

    def decision(self) -> Decision:
        """The verdict on one request: allowed when anything was granted."""
        return Decision(self.granted > 0, self.limit, self.remaining, self.reset_s, max(1, math.ceil(self.wait_s)))


class Limits:
    """Token buckets and quota windows per tenant, in one process (the RateLimiter replica)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill)
        self._windows: dict[str, tuple[int, int]] = {}  # tenant -> (window index, used)

    def _tokens(self, tenant: str, rate: RateLimitArgs, now: float) -> float:
        tokens, last = self._buckets.get(tenant, (float(rate.burst), now))
        return min(float(rate.burst), tokens + (now - last) * rate.requests_per_second)

    def _used(self, tenant: str, quota: QuotaArgs, now: float) -> tuple[int, int]:
        window = int(now // quota.window_s)
        start, used = self._windows.get(tenant, (window, 0))
        return window, used if start == window else 0

    def acquire(self, tenant: str, rate: RateLimitArgs | None, quota: QuotaArgs | None) -> Decision:
        """Take one request from the tenant's quota and bucket, or refuse and say when to retry."""
        return self.lease(tenant, rate, quota, 1).decision()

    def lease(self, tenant: str, rate: RateLimitArgs | None, quota: QuotaArgs | None, want: int) -> Lease:
        """Take up to `want` requests from the tenant's quota and bucket at once, as `want` calls
        of acquire would: fewer (possibly none) when fewer are left. Granting none costs nothing."""
        if want < 1:
            raise ValueError(f"a lease is of at least 1 request, not {want}")
        now = self._clock()
        granted = want
        window = used = 0
        tokens = end = 0.0
        if quota is not None:
            window, used = self._used(tenant, quota, now)
            end = (window + 1) * quota.window_s
            granted = min(granted, quota.requests - used)
        if rate is not None:
            tokens = self._tokens(tenant, rate, now)
            granted = min(granted, int(tokens))
        granted = max(0, granted)
        # Each limit's (limit, remaining, reset, wait for the next request) after the grant.
        figures: list[tuple[int, int, int, float]] = []
        if quota is not None:
            left = quota.requests - used - granted
            figures.append((quota.requests, max(0, left), math.ceil(end - now), end - now if left <= 0 else 0.0))
        if rate is not None:
            after = tokens - granted
            refill = math.ceil((rate.burst - after) / rate.requests_per_second)
            wait = (1.0 - after) / rate.requests_per_second if after < 1.0 else 0.0
            figures.append((rate.burst, max(0, int(after)), refill, wait))
            self._buckets[tenant] = (after, now)
        if quota is not None and granted:
            self._windows[tenant] = (window, used + granted)
        if granted:
            limit, remaining, reset, wait = min(figures, key=lambda f: f[1], default=(0, 0, 0, 0.0))
        else:  # the limit that frees up last says when to retry
            limit, remaining, reset, wait = max(figures, key=lambda f: f[3])
        ttl = LEASE_TTL_S if quota is None else min(LEASE_TTL_S, end - now)
        return Lease(granted, ttl, window, limit, remaining, reset, wait)

    def give_back(
        self, tenant: str, unused: int, rate: RateLimitArgs | None, quota: QuotaArgs | None, window: int
    ) -> None:
        """Return `unused` leased requests: to the quota while `window` (the lease's) is still the
        current one, and to the bucket (never above its burst)."""
        now = self._clock()
        if quota is not None:
            current, used = self._used(tenant, quota, now)
            if current == window:
                self._windows[tenant] = (window, max(0, used - unused))
        if rate is not None:
            self._buckets[tenant] = (min(float(rate.burst), self._tokens(tenant, rate, now) + unused), now)


@serve.deployment  # options: deployments.app.LIMITER_OPTIONS
class RateLimiter:
    """The one place that counts requests, shared by every ingress replica (keep 1 replica)."""

    def __init__(self) -> None:
        self._limits = Limits()

    def acquire(self, tenant: str, rate: RateLimitArgs | None, quota: QuotaArgs | None) -> Decision:
        """Count one request of `tenant`."""
        return self._limits.acquire(tenant, rate, quota)

    def lease(self, tenant: str, rate: RateLimitArgs | None, quota: QuotaArgs | None, want: int) -> Lease:
        """Grant up to `want` requests of `tenant` at once (a gateway's LeaseCache asks)."""
        return self._limits.lease(tenant, rate, quota, want)

    def give_back(
        self, tenant: str, unused: int, rate: RateLimitArgs | None, quota: QuotaArgs | None, window: int
    ) -> None:
        """Return leased requests of `tenant` that expired unused."""
        self._limits.give_back(tenant, unused, rate, quota, window)


def main(argv: list[str]) -> int:
    """`new-key`: print a fresh key once, and the key store entry holding only its hash."""
    parser = argparse.ArgumentParser(prog="python -m deployments.auth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new-key", help="create a key and its key store entry")
    new.add_argument("--tenant", required=True)
    new.add_argument("--models", default=ALL_MODELS, help="comma-separated model names, or *")
    new.add_argument("--rate", type=float, help="requests per second")
    new.add_argument("--burst", type=int, help="bucket size (default: 2 x rate)")
    new.add_argument("--quota", type=int, help="requests per window")
    new.add_argument("--window", type=int, default=86_400, help="quota window in seconds")
    new.add_argument("--admin", action="store_true", help="may upload data sets, train and roll out")
    args = parser.parse_args(argv)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {
        "name": args.tenant,
        "key_sha256": [hash_key(key)],
        "models": args.models.split(","),
    }
    if args.rate:
        entry["rate_limit"] = {"requests_per_second": args.rate, "burst": args.burst or max(1, int(2 * args.rate))}
    if args.quota:
        entry["quota"] = {"requests": args.quota, "window_s": args.window}
    if args.admin:
        entry["admin"] = True
    TenantArgs.model_validate(entry)
    print(f"# the key (shown once; store it in the client's secret store):\n# {key}", file=sys.stderr)
    print(json.dumps({"tenants": [entry]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
