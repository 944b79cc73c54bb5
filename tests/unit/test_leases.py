"""Leased rate limits: gateways admitting from leases of one shared Limits, on a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from deployments.auth import LEASE_TTL_S, Decision, Lease, Limits, QuotaArgs, RateLimitArgs, Tenant
from deployments.errors import Overloaded
from deployments.leases import REFUSAL_HOLD_S, LeaseCache, lease_cap


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Limiter:
    """The RateLimiter's calls over one Limits, each answered `delay` event-loop turns later."""

    def __init__(self, clock: Clock, delay: int = 0, fail: bool = False) -> None:
        self.limits = Limits(clock)
        self.clock = clock
        self.delay = delay
        self.fail = fail
        self.wants: list[int] = []  # every lease asked for
        self.given: list[int] = []  # every give-back

    async def _turns(self) -> None:
        for _ in range(self.delay):
            await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("the limiter is gone")

    async def lease(self, tenant: str, rate: RateLimitArgs | None, quota: QuotaArgs | None, want: int) -> Lease:
        self.wants.append(want)
        await self._turns()
        return self.limits.lease(tenant, rate, quota, want)

    async def give_back(
        self, tenant: str, unused: int, rate: RateLimitArgs | None, quota: QuotaArgs | None, window: int
    ) -> None:
        self.given.append(unused)
        await self._turns()
        self.limits.give_back(tenant, unused, rate, quota, window)

    def gateway(self) -> LeaseCache:
        return LeaseCache(self.lease, self.give_back, self.clock)


def tenant(rate: RateLimitArgs | None = None, quota: QuotaArgs | None = None) -> Tenant:
    return Tenant("acme", frozenset({"*"}), rate, quota)


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


async def turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def settled(gateway: LeaseCache, who: Tenant) -> Decision:
    """One request's decision, once the limiter calls it started have been answered."""
    decision = await gateway.admit(who)
    await turns()
    return decision


def test_lease_takes_what_that_many_acquires_would() -> None:
    clock = Clock()
    limits, one_by_one = Limits(clock), Limits(clock)
    rate = RateLimitArgs(requests_per_second=2, burst=5)
    quota = QuotaArgs(requests=7, window_s=60)
    for want in (3, 4, 2):
        lease = limits.lease("t", rate, quota, want)
        decisions = [one_by_one.acquire("t", rate, quota) for _ in range(want)]
        assert lease.granted == sum(d.allowed for d in decisions)
        last = [d for d in decisions if d.allowed][-1:] or decisions
        assert lease.decision() == last[0]
        clock.now += 1.0
    # 3 and 4 were granted, the quota's 7 are gone: refused until its window ends (at 1020 s).
    refused = limits.lease("t", rate, quota, 1)
    assert (refused.granted, refused.limit) == (0, 7)
    assert refused.decision().retry_after_s == refused.reset_s == 17


def test_a_lease_of_a_quota_ends_with_its_window_and_unused_requests_go_back() -> None:
    clock = Clock()
    clock.now = 59.5
    limits = Limits(clock)
    quota = QuotaArgs(requests=10, window_s=60)
    lease = limits.lease("t", None, quota, 8)
    assert (lease.granted, lease.ttl_s, lease.window) == (8, 0.5, 0)
    limits.give_back("t", 5, None, quota, lease.window)
    assert limits.acquire("t", None, quota).remaining == 10 - 3 - 1
    clock.now = 60.5
    limits.acquire("t", None, quota)
    limits.give_back("t", 1, None, quota, lease.window)  # a past window's: nothing to return to
    assert limits.acquire("t", None, quota).remaining == 10 - 2


def test_lease_size_is_a_share_of_the_burst_the_rate_and_the_quota() -> None:
    assert lease_cap(RateLimitArgs(requests_per_second=100, burst=200), None) == 25  # rate x 0.25 s
    assert lease_cap(RateLimitArgs(requests_per_second=100, burst=40), None) == 10  # burst / 4
    assert lease_cap(RateLimitArgs(requests_per_second=100, burst=200), QuotaArgs(requests=500)) == 5
    assert lease_cap(RateLimitArgs(requests_per_second=0.2, burst=3), QuotaArgs(requests=2)) == 1
    assert lease_cap(None, None) == 1


def test_a_steady_stream_under_the_rate_costs_a_limiter_call_per_lease_off_the_request_path() -> None:
    clock = Clock()
    limiter = Limiter(clock, delay=3)
    gateway = limiter.gateway()
    rate = RateLimitArgs(requests_per_second=100, burst=200)
    cap = lease_cap(rate, None)

    async def stream() -> int:
        waited = 0
        for _ in range(400):  # 80 requests a second for 5 s
            clock.now += 1 / 80
            request = asyncio.ensure_future(gateway.admit(tenant(rate)))
            await asyncio.sleep(0)
            waited += not request.done()  # it needed the limiter's answer
            assert (await request).allowed
            await turns()
        return waited

    assert run(stream()) == 1  # only the first request waited for a lease
    # Each refill tops the stock up from its low-water mark (cap // 4) to the cap.
    assert len(limiter.wants) <= 1 + 400 / (cap - cap // 4)
    assert limiter.given == []


def test_a_burst_above_the_stock_waits_for_one_lease_and_shares_it() -> None:
    clock = Clock()
    limiter = Limiter(clock, delay=3)
    gateway = limiter.gateway()
    rate = RateLimitArgs(requests_per_second=100, burst=200)  # leases of 25

    async def burst(n: int) -> list[bool]:
        allowed = [d.allowed for d in await asyncio.gather(*(gateway.admit(tenant(rate)) for _ in range(n)))]
        await turns()
        return allowed

    async def bursts() -> None:
        assert await burst(20) == [True] * 20  # concurrent first requests: one lease between them...
        assert limiter.wants == [25, 20]  # ...and the 5 left are topped up to 25 in the background
        assert await burst(30) == [True] * 30  # 25 from the stock, 5 wait for the one refill it starts
        assert limiter.wants == [25, 20, 25]

    run(bursts())


def test_a_refused_tenant_gets_retry_after_from_the_gateway_without_asking_again() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    gateway = limiter.gateway()
    rate = RateLimitArgs(requests_per_second=0.5, burst=2)  # leases of 1

    def admit() -> Decision:
        decision: Decision = run(settled(gateway, tenant(rate)))
        return decision

    assert [admit().allowed for _ in range(2)] == [True, True]
    asked = len(limiter.wants)
    refused = admit()
    assert not refused.allowed
    assert refused.headers()["Retry-After"] == "2"  # one token at 0.5/s
    assert (refused.headers()["X-RateLimit-Limit"], refused.headers()["X-RateLimit-Remaining"]) == ("2", "0")
    assert not admit().allowed
    assert len(limiter.wants) == asked  # the limiter's refusal is remembered for a while
    clock.now += REFUSAL_HOLD_S
    assert not admit().allowed  # asked again: still no token
    assert len(limiter.wants) == asked + 1
    clock.now += 1.0
    assert admit().allowed


def test_a_tenant_over_its_quota_is_told_to_retry_when_the_window_ends() -> None:
    clock = Clock()  # 1000 s: 200 s into a 600 s window
    limiter = Limiter(clock)
    gateway = limiter.gateway()
    quota = QuotaArgs(requests=2, window_s=600)
    decisions = [run(settled(gateway, tenant(quota=quota))) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].headers()["Retry-After"] == "200"


def test_one_gateway_refuses_after_the_burst_as_one_call_per_request_did() -> None:
    """The integration test's tenants (tests/integration/test_auth.py), one request at a time."""
    clock = Clock()
    limiter = Limiter(clock, delay=2)
    gateway = limiter.gateway()
    limited = tenant(RateLimitArgs(requests_per_second=0.2, burst=3))
    quota = Tenant("quota", frozenset({"*"}), None, QuotaArgs(requests=2, window_s=3600))

    async def requests(who: Tenant, n: int) -> list[Decision]:
        decisions = []
        for _ in range(n):
            decisions.append(await settled(gateway, who))
            clock.now += 0.1  # a prediction's time
        return decisions

    async def both() -> None:
        rated = await requests(limited, 5)
        assert [d.allowed for d in rated] == [True, True, True, False, False]
        assert [d.headers()["X-RateLimit-Remaining"] for d in rated[:3]] == ["2", "1", "0"]
        assert rated[3].headers()["X-RateLimit-Limit"] == "3"
        assert int(rated[3].headers()["Retry-After"]) >= 1
        quotas = await requests(quota, 4)
        assert [d.allowed for d in quotas] == [True, True, False, False]
        assert int(quotas[3].headers()["Retry-After"]) > 60

    run(both())


def test_a_limiter_error_is_503_overloaded_for_every_waiting_request() -> None:
    clock = Clock()
    limiter = Limiter(clock, delay=2, fail=True)
    gateway = limiter.gateway()

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(gateway.admit(tenant(RateLimitArgs(requests_per_second=10, burst=20))) for _ in range(3)),
            return_exceptions=True,
        )

    errors = run(burst())
    assert all(isinstance(e, Overloaded) and "rate limiting is unavailable" in e.message for e in errors)
    assert len(limiter.wants) == 1
    limiter.fail = False
    assert run(burst())[0].allowed  # the next request asks again


def test_requests_left_unused_at_expiry_go_back_to_the_quota() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    gateway = limiter.gateway()
    quota = QuotaArgs(requests=1000, window_s=3600)  # leases of 10
    assert run(settled(gateway, tenant(quota=quota))).allowed
    assert limiter.wants == [10]
    clock.now += LEASE_TTL_S
    assert run(
        settled(gateway, tenant(quota=quota))
    ).allowed  # finds its 9 expired: they go back, and a lease of half the size comes
    assert (limiter.given, limiter.wants) == ([9], [10, 5])
    assert limiter.limits.acquire("acme", None, quota).remaining == 1000 - 1 - 5 - 1


def steady_pause_then_hammer(t: float, rng: random.Random) -> int:
    """A gateway's requests in one 5 ms step at time t of a 7 s cycle: 2 s at 16 a second (four
    gateways stay under a rate of 100 and hold full stocks), 0.6 s of nothing (the bucket refills
    beside those stocks), 1.9 s of 0-3 a step (far over the rate), then 2.5 s idle (leases expire
    and are given back)."""
    t %= 7.0
    if t < 2.0:
        return int(rng.random() < 0.08)
    if 2.6 <= t < 4.5:
        return rng.randint(0, 3)
    return 0


def over_the_window_end(t: float, rng: random.Random) -> int:
    """A gateway's requests in one 5 ms step at time t, in 5 s quota windows: a window at 8 a
    second (under its quota: gateways hold stocks as it ends), then one of 0-3 a step for 1.5 s."""
    if int(t // 5.0) % 2 == 0:
        return int(rng.random() < 0.04)
    return rng.randint(0, 3) if t % 5.0 < 1.5 else 0


Demand = Callable[[float, random.Random], int]


def hammer(
    limiter: Limiter, gateways: int, who: Tenant, seconds: float, seed: int, demand: Demand = steady_pause_then_hammer
) -> np.ndarray:
    """`gateways` LeaseCaches over one limiter, sent the tenant's requests as `demand` says, with
    the limiter's answers 3 loop turns late; the times of the admitted requests."""
    step = 0.005
    caches = [limiter.gateway() for _ in range(gateways)]
    rng = random.Random(seed)
    admitted: list[float] = []

    async def one(cache: LeaseCache) -> None:
        if (await cache.admit(who)).allowed:
            admitted.append(limiter.clock.now)

    async def drive() -> None:
        pending: list[asyncio.Future[None]] = []
        for tick in range(int(seconds / step)):
            limiter.clock.now += step
            for cache in caches:
                pending += [asyncio.ensure_future(one(cache)) for _ in range(demand(tick * step, rng))]
            await turns(rng.randint(0, 4))
        await asyncio.gather(*pending)

    run(drive())
    return np.array(sorted(admitted))


@pytest.mark.parametrize("seed", [1, 2])
def test_gateways_over_one_limiter_admit_at_most_burst_plus_rate_plus_one_lease_each(seed: int) -> None:
    gateways = 4
    rate = RateLimitArgs(requests_per_second=100, burst=40)
    cap = lease_cap(rate, None)  # 10
    limiter = Limiter(Clock(), delay=3)
    times = hammer(limiter, gateways, tenant(rate), seconds=21.0, seed=seed)
    # Over every interval [times[i], times[j]]: j - i + 1 requests admitted.
    worst = 0.0
    for i in range(len(times)):
        counts = np.arange(1, len(times) - i + 1)
        excess = counts - (rate.burst + rate.requests_per_second * (times[i:] - times[i]))
        worst = max(worst, float(excess.max()))
    assert worst <= gateways * cap
    assert worst > cap  # the stocks held through the pause were spent on top of the refilled bucket
    # ...and the leases do not starve it: each hammering spell gets near burst + rate * 1.9 s.
    assert len(times) >= 0.9 * 3 * (rate.burst + rate.requests_per_second * 1.9)


def test_gateways_over_one_limiter_never_exceed_a_quota() -> None:
    gateways = 4
    quota = QuotaArgs(requests=300, window_s=5)
    cap = lease_cap(None, quota)  # 3
    limiter = Limiter(Clock(), delay=3)  # 1000 s: a window starts
    times = hammer(limiter, gateways, tenant(quota=quota), seconds=20.0, seed=3, demand=over_the_window_end)
    windows, counts = np.unique((times // quota.window_s).astype(int), return_counts=True)
    assert len(windows) == 4
    # Leases held as a window ends end with it: the next window's hammering gets its own quota only.
    assert counts.max() <= quota.requests
    # A hammered window spends its quota, less at most what gateways hold at its end.
    assert counts[1::2].min() >= quota.requests - gateways * cap
