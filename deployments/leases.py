"""Rate limits and quotas without a limiter call per request: each gateway leases a few of a
tenant's requests at a time from the RateLimiter and admits requests locally while it holds some.

A gateway's LeaseCache holds, per tenant, a stock of leased requests. A request takes one from
the stock; only when the stock is empty (the tenant's first request here, or a burst above the
stock) does it wait for a lease, and concurrent requests of the tenant share that one call. When
a request leaves the stock at its low-water mark (a quarter of the lease size), a lease that tops
it up is taken in the background, off the request path. A tenant has at most one limiter call in
flight per gateway.

Lease size. A tenant's lease is at most

    L = max(1, min(burst // 4, floor(requests_per_second * 0.25 s), quota_requests // 100))

(each term only where the tenant has that limit): a quarter of its burst, a quarter of a second
of its rate, a hundredth of its quota. Within L the size follows demand: it starts at L, halves
when leased requests expire unused and doubles (up to L) when a lease is granted in full, so a
gateway that sees little of a tenant comes to hold little of it. A lease tops the stock up to the
size, so what one gateway holds of a tenant, is being granted and is giving back is never more
than L.

Expiry. Leased requests stay usable for LEASE_TTL_S (2 s) from when the lease was asked for, and
a lease of a quota ends no later than the window it was counted in. Requests that expire unused
are given back in the background: to the bucket, and to the quota while their window lasts.

Bounds. With G gateways holding leases of a tenant, over any interval of t seconds the tenant is
admitted at most

    burst + requests_per_second * t + G * L

requests (a limiter asked for every request admits at most burst + requests_per_second * t). Why:
a request is admitted only with a leased request; at the start of the interval at most G * L of
them are outside the bucket (held, being granted or being given back), the bucket holds at most
`burst`, and during the interval it refills by at most requests_per_second * t, plus what is given
back, which only returns what left it. A quota is never exceeded: every admitted request was
counted in its window when leased, and is admitted before that window ends, since the lease's
expiry is counted from before the grant (the clocks of two processes tick at the same rate; their
readings may differ). As today, a restart of the RateLimiter starts its counts afresh.

The other side: a gateway may refuse a tenant while other gateways hold its requests (at most
(G - 1) * L, for at most the TTL). Once the limiter has run dry for a tenant, the gateway answers
429 itself until a lease's worth may have come back (at most REFUSAL_HOLD_S) before asking again,
so a tenant far over its rate costs a few limiter calls a second, not one per request.

The X-RateLimit-* headers are approximate: Remaining is the limiter's figure when the latest lease
was granted plus what this gateway still holds (other gateways' use since is not seen), and Reset
counts down from the latest lease's figure. A refusal carries Retry-After from the limiter's
answer. When the limiter cannot be reached the request fails closed: 503 Overloaded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.auth import Decision, Lease, QuotaArgs, RateLimitArgs, Tenant
from deployments.errors import Overloaded

logger = logging.getLogger("ray.serve")

# A lease is at most this long at the tenant's rate, a 1/BURST_SHARE of its burst and a
# 1/QUOTA_SHARE of its quota.
LEASE_PERIOD_S = 0.25
BURST_SHARE = 4
QUOTA_SHARE = 100
# The longest a gateway answers 429 itself once the limiter ran dry, before it asks again.
REFUSAL_HOLD_S = 1.0

# (tenant, rate, quota, want) -> Lease; (tenant, unused, rate, quota, window) -> None.
LeaseCall = Callable[[str, RateLimitArgs | None, QuotaArgs | None, int], Awaitable[Lease]]
GiveBackCall = Callable[[str, int, RateLimitArgs | None, QuotaArgs | None, int], Awaitable[None]]


def lease_cap(rate: RateLimitArgs | None, quota: QuotaArgs | None) -> int:
    """L: the most requests of a tenant one gateway holds (the module docstring's rule)."""
    caps: list[int] = []
    if rate is not None:
        caps += [rate.burst // BURST_SHARE, math.floor(rate.requests_per_second * LEASE_PERIOD_S)]
    if quota is not None:
        caps.append(quota.requests // QUOTA_SHARE)
    return max(1, min(caps, default=1))


@dataclass
class _Lot:
    """What is left of one lease."""

    left: int
    expires: float
    window: int


@dataclass(eq=False)
class _Stock:
    """One tenant's leased requests at this gateway."""

    tenant: Tenant
    cap: int
    size: int  # what the next lease tops the stock up to
    held: int = 0
    lots: deque[_Lot] = field(default_factory=deque)
    returns: dict[int, int] = field(default_factory=dict)  # quota window -> expired, not yet given back
    call: asyncio.Task[Exception | bool] | None = None  # the tenant's one limiter call in flight
    latest: Lease | None = None
    asked: float = 0.0  # when `latest` was asked for
    refused_until: float = -math.inf

    def busy(self) -> bool:
        return self.call is not None and not self.call.done()


class LeaseCache:
    """One gateway's leased requests, per tenant; `admit` decides each request."""

    def __init__(self, lease: LeaseCall, give_back: GiveBackCall, clock: Callable[[], float] = time.monotonic) -> None:
        self._lease = lease
        self._give_back = give_back
        self._clock = clock
        self._stocks: dict[str, _Stock] = {}

    @classmethod
    def over(cls, limiter: Any) -> LeaseCache:
        """A cache whose leases come from `limiter`, a handle to the RateLimiter deployment."""

        async def lease(*args: Any) -> Lease:
            result: Lease = await limiter.lease.remote(*args)
            return result

        async def give_back(*args: Any) -> None:
            await limiter.give_back.remote(*args)

        return cls(lease, give_back)

    async def admit(self, tenant: Tenant) -> Decision:
        """Admit one request of `tenant` (a Decision with its X-RateLimit-* figures) or refuse it
        (allowed False, with Retry-After); Overloaded (503) when the limiter cannot be reached."""
        stock = self._stocks.get(tenant.name)
        if stock is None:
            cap = lease_cap(tenant.rate_limit, tenant.quota)
            stock = self._stocks[tenant.name] = _Stock(tenant, cap, size=cap)
        while True:
            now = self._clock()
            self._expire(stock)
            if stock.held:
                return self._take(stock, now)
            if now < stock.refused_until:
                return self._refusal(stock, now)
            task = stock.call
            if task is None or task.done():
                task = self._start(stock, lease=True)
            # Shielded: a request that goes away does not cancel the call others wait for.
            outcome = await asyncio.shield(task)
            if isinstance(outcome, Exception):
                raise Overloaded("rate limiting is unavailable; retry later")
            if outcome and not stock.held:  # the limiter had fewer than asked, and they are gone
                return self._refusal(stock, self._clock())

    def _take(self, stock: _Stock, now: float) -> Decision:
        lot = stock.lots[0]
        lot.left -= 1
        stock.held -= 1
        if not lot.left:
            stock.lots.popleft()
        if stock.held <= stock.size // 4 and now >= stock.refused_until and not stock.busy():
            self._start(stock, lease=True)  # refill, off this request's path
        latest = stock.latest
        assert latest is not None  # held requests came from a lease
        remaining = min(latest.limit, latest.remaining + stock.held)
        return Decision(True, latest.limit, remaining, self._reset(stock, now), 0)

    def _refusal(self, stock: _Stock, now: float) -> Decision:
        latest = stock.latest
        assert latest is not None  # a refusal came from a lease
        retry = max(1, math.ceil(stock.asked + latest.wait_s - now))
        return Decision(False, latest.limit, 0, self._reset(stock, now), retry)

    def _reset(self, stock: _Stock, now: float) -> int:
        assert stock.latest is not None
        return max(0, math.ceil(stock.asked + stock.latest.reset_s - now))

    def _start(self, stock: _Stock, lease: bool) -> asyncio.Task[Exception | bool]:
        task = asyncio.get_running_loop().create_task(self._call(stock, lease))
        stock.call = task
        task.add_done_callback(lambda done: None if done.cancelled() else self._after(stock))
        return task

    def _after(self, stock: _Stock) -> None:
        """Give back what expired (while the last call was in flight, or just now)."""
        if stock.returns and not stock.busy():
            self._start(stock, lease=False)

    async def _call(self, stock: _Stock, lease: bool) -> Exception | bool:
        """The tenant's one limiter call: give back what expired, then (when `lease`) top the stock
        up to its size. Returns the error, or whether the limiter granted fewer than asked."""
        tenant = stock.tenant
        args = (tenant.rate_limit, tenant.quota)
        try:
            while stock.returns:  # lost if the limiter fails: it restarts with fresh counters
                returns, stock.returns = stock.returns, {}
                for window, unused in returns.items():
                    await self._give_back(tenant.name, unused, *args, window)
            want = stock.size - stock.held
            if not lease or want < 1:
                return False
            asked = self._clock()
            granted = await self._lease(tenant.name, *args, want)
        except Exception as exc:
            logger.exception("rate limiter unavailable")
            return exc
        stock.latest, stock.asked = granted, asked
        if granted.wait_s:  # the limiter ran dry: ask again once a lease's worth may have come back
            rate = tenant.rate_limit
            pause = max(granted.wait_s, stock.size / rate.requests_per_second if rate else 0.0)
            stock.refused_until = asked + min(pause, REFUSAL_HOLD_S)
        if granted.granted:
            expires = asked + granted.ttl_s
            stock.lots.append(_Lot(granted.granted, expires, granted.window))
            stock.held += granted.granted
            asyncio.get_running_loop().call_later(max(0.0, expires - self._clock()), self._expire, stock)
        if granted.granted == want:
            stock.size = min(stock.cap, 2 * stock.size)
        return granted.granted < want

    def _expire(self, stock: _Stock) -> None:
        """Drop expired leases from the stock and give back what they left unused."""
        now = self._clock()
        unused = 0
        while stock.lots and stock.lots[0].expires <= now:
            lot = stock.lots.popleft()
            stock.returns[lot.window] = stock.returns.get(lot.window, 0) + lot.left
            unused += lot.left
        if unused:
            stock.held -= unused
            stock.size = max(1, stock.size // 2)
            self._after(stock)
