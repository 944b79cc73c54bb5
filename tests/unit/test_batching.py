"""Batch caps on synthetic numbers (no Ray, no torch): the cap measured at warm-up from a throughput
curve, and the SLO-aware controller from items' queue waits and batch times."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest

from deployments import batching
from deployments.args import BatchConfig
from deployments.batching import Batcher, SloBatchController, batch_sizes, choose_batch_cap, measure_throughput


def curve(*rates: float) -> dict[int, float]:
    """Items/s at batch 1, 2, 4, ... in order."""
    return {2**i: rate for i, rate in enumerate(rates)}


def test_the_sizes_measured_are_the_powers_of_two_up_to_the_cap_and_the_cap() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(12) == [1, 2, 4, 8, 12]


@pytest.mark.parametrize(
    ("rates", "cap"),
    [
        ((100, 101, 99, 100, 102), 1),  # flat: batching buys nothing
        ((100, 104, 103, 106, 104), 1),  # within the noise of timing a forward
        ((100, 190, 360, 700, 1300), 16),  # keeps gaining: the largest size
        ((100, 190, 350, 360, 365, 362), 4),  # the knee
        ((100, 110, 120, 130, 140, 150), 32),  # +8% a doubling all the way: 1.5x at 32
        ((100, 107, 111, 106, 98), 2),  # resnet18 on 2 cores: +7% at 2, then flat
        ((100, 180, 175, 330, 600), 16),  # a noisy dip on the way up does not stop the climb
        ((100, 200, 400, 390, 440, 430), 4),  # small ups and downs past the knee do not move it
        ((100, 60, 30), 1),  # slower per item in batches (memory-bound on a CPU)
    ],
)
def test_the_measured_cap_is_where_the_gain_per_doubling_stops(rates: tuple[float, ...], cap: int) -> None:
    assert choose_batch_cap(curve(*rates)) == cap


def test_the_gain_is_per_doubling_and_a_last_size_off_the_powers_of_two_counts() -> None:
    # 8 -> 12 is 0.58 of a doubling: +4% is more than 1.05 ** 0.58 (2.9%), +2% is not.
    assert choose_batch_cap({1: 100, 2: 200, 4: 400, 8: 800, 12: 832}) == 12
    assert choose_batch_cap({1: 100, 2: 200, 4: 400, 8: 800, 12: 816}) == 8
    assert choose_batch_cap({}) == 1
    assert choose_batch_cap(curve(100, 112), min_gain=0.1) == 2


class FakeModel:
    """A forward whose batch of n takes `cost(n, call)` seconds of a clock it advances itself."""

    def __init__(self, cost: Callable[[int, int], float]) -> None:
        self.now = 0.0
        self.calls: list[int] = []
        self._cost = cost

    def clock(self) -> float:
        return self.now

    def run(self, size: int) -> None:
        self.now += self._cost(size, len(self.calls))
        self.calls.append(size)

    def measure(
        self, sizes: list[int], known: dict[int, float] | None = None, budget_s: float = batching.MEASURE_BUDGET_S
    ) -> tuple[dict[int, float], str | None]:
        return measure_throughput(self.run, sizes, known or {}, budget_s=budget_s, clock=self.clock)


def test_measuring_times_each_size_in_rounds_after_one_untimed_run_and_keeps_the_median() -> None:
    # 10 ms + 5 ms per item, and one run in five twice as slow (another process on the cores).
    model = FakeModel(lambda n, call: (0.010 + 0.005 * n) * (2 if call % 5 == 4 else 1))
    rates, stopped = model.measure([1, 2, 4])
    assert stopped is None
    assert rates == pytest.approx({1: 1 / 0.015, 2: 2 / 0.020, 4: 4 / 0.030})
    # The untimed runs in increasing order, then rounds of one run of each size.
    assert model.calls[:6] == [1, 2, 4, 1, 2, 4]
    assert len(model.calls) % 3 == 0
    # Cheap: more rounds than the minimum, while the rounds have taken under a quarter second.
    assert batching.MEASURE_RUNS < len(model.calls) // 3 - 1 <= batching.MEASURE_MAX_ROUNDS


def test_measuring_stops_growing_after_a_batch_over_a_second() -> None:
    model = FakeModel(lambda n, _: 0.3 * n)
    rates, stopped = model.measure([1, 2, 4, 8], budget_s=60.0)
    assert sorted(rates) == [1, 2, 4]  # a batch of 4 takes 1.2 s: 8 is not tried
    assert stopped == "stopped before batch 8: batch 4 took 1.20s"
    assert model.calls.count(4) == 1  # over a second: its untimed run is all it gets
    assert model.calls.count(2) == 1 + batching.MEASURE_RUNS
    assert rates[4] == pytest.approx(4 / 1.2)


def test_measuring_stops_before_a_size_that_would_pass_the_budget() -> None:
    # 4 runs per size (untimed, then 3 rounds): 0.4 s at 1, 0.8 s at 2, 1.6 s at 4, then 3.2 s at 8.
    model = FakeModel(lambda n, _: 0.1 * n)
    rates, stopped = model.measure([1, 2, 4, 8])
    assert sorted(rates) == [1, 2, 4]
    assert stopped == "stopped before batch 8: it would pass the 3s budget"
    assert model.now == pytest.approx(2.8)


def test_known_sizes_are_not_run_again_but_still_stop_the_growth() -> None:
    model = FakeModel(lambda n, _: 0.001 * n)
    rates, _ = model.measure([1, 2, 4, 8], known={1: 1000.0, 2: 2000.0})
    assert set(rates) == {4, 8}
    assert set(model.calls) == {4, 8}
    slow = FakeModel(lambda n, _: 0.001 * n)
    rates, stopped = slow.measure([1, 2, 4], known={1: 1.0, 2: 1.5})  # a known batch of 2 took 1.33 s
    assert (rates, slow.calls) == ({}, [])
    assert stopped == "stopped before batch 4: batch 2 took 1.33s"


def drive(
    controller: SloBatchController,
    batch_ms: float,
    rounds: int,
    per_item_ms: float = 0.0,
    wait_ms: float | None = None,
) -> list[int]:
    """Feed full batches whose time is `batch_ms` + `per_item_ms` per item and whose items each
    waited `wait_ms` (by default one batch time: the batch ahead of theirs); the caps seen."""
    caps = []
    for _ in range(rounds):
        took = batch_ms + per_item_ms * controller.cap
        controller.observe(controller.cap, took, [took if wait_ms is None else wait_ms] * controller.cap)
        caps.append(controller.cap)
    return caps


def test_grows_additively_while_full_batches_stay_inside_the_budget() -> None:
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=16, batch_wait_timeout_s=0.0)
    caps = drive(controller, 5.0, 400)
    assert caps[0] == 1
    assert max(b - a for a, b in itertools.pairwise(caps)) == 1  # one step at a time
    assert caps[-1] == 16  # and never past max_batch_size


def test_settles_where_wait_and_batch_time_meet_the_budget() -> None:
    # 10 ms per item, each item waiting one batch ahead of its own, target 200 ms, no wait timeout:
    # an item takes 2 x 10 ms x cap, inside the 200 ms budget up to 10 items.
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=64, batch_wait_timeout_s=0.0)
    caps = drive(controller, 0.0, 2000, per_item_ms=10.0)
    # It grows while items take under 80% of the budget (up to 8 items = 160 ms) and stays there.
    assert set(caps[-500:]) == {8}


def test_backs_off_multiplicatively_when_batches_get_slow() -> None:
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=32, batch_wait_timeout_s=0.0)
    drive(controller, 5.0, 600)
    assert controller.cap == 32
    # The machine gets busy: every batch now takes 150 ms, and an item 300 ms, over the 200 ms budget.
    caps = drive(controller, 150.0, 200)
    assert caps[-1] == 1
    assert caps[7] == 28  # the first decision after 8 batches: 32 * 0.9, floored


def test_does_not_grow_a_cap_that_batches_never_reach() -> None:
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=32, batch_wait_timeout_s=0.0)
    while controller.cap < 3:
        controller.observe(controller.cap, 5.0, [1.0] * controller.cap)
    reached = controller.cap  # a fresh window right after the change
    for _ in range(200):  # light load: batches of one, whatever the cap
        controller.observe(1, 5.0, [1.0])
    assert controller.cap == reached


def test_the_wait_timeout_is_kept_out_of_the_budget() -> None:
    assert SloBatchController(100.0, 8, 0.02).budget_ms == pytest.approx(80.0)


def test_a_long_queue_wait_backs_off_though_batches_are_fast() -> None:
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=16, batch_wait_timeout_s=0.0)
    drive(controller, 5.0, 400)
    assert controller.cap == 16
    # Batches still take 5 ms, but items now queue 250 ms before theirs starts.
    caps = drive(controller, 5.0, 200, wait_ms=250.0)
    assert caps[7] == 14
    assert caps[-1] == 1


def test_a_batch_time_near_the_target_grows_while_items_do_not_wait() -> None:
    # 150 ms batches under a 200 ms target: with items hardly waiting (a replica kept below
    # saturation) the sum stays under 80% of the budget, so the cap grows to the measured one.
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=4, batch_wait_timeout_s=0.0)
    assert drive(controller, 150.0, 200, wait_ms=5.0)[-1] == 4
    assert drive(controller, 150.0, 200, wait_ms=60.0)[-1] == 1  # 210 ms: over


def test_the_p99_is_of_items_not_of_batches() -> None:
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=16, batch_wait_timeout_s=0.0)
    drive(controller, 5.0, 400)
    # One item in each batch of 16 (6%) waits 400 ms: over the budget at p99, though the median batch is fine.
    for _ in range(8):
        controller.observe(16, 5.0, [400.0] + [5.0] * 15)
    assert controller.cap == 14


def test_batch_config_validates_the_target() -> None:
    assert BatchConfig.model_validate({"target_p99_ms": 50}).target_p99_ms == 50.0
    assert BatchConfig().target_p99_ms is None
    with pytest.raises(ValueError, match="greater than 0"):
        BatchConfig.model_validate({"target_p99_ms": 0})
    with pytest.raises(ValueError, match="positive"):
        SloBatchController(0.0, 8, 0.0)


def test_torch_threads_follow_the_replica_cpus_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments import image_model

    monkeypatch.delenv(image_model.THREADS_ENV, raising=False)
    assert image_model._replica_threads() == 1  # outside a Ray worker: one
    monkeypatch.setenv(image_model.THREADS_ENV, "2")
    assert image_model._replica_threads() == 2


class Worker:
    """A batch function that records its batches and, while `hold` is clear, blocks in the first one."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.started = asyncio.Event()
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.started.set()
        await self.hold.wait()
        return [item * 10 for item in items]


async def _submit_while_the_first_batch_runs(batcher: Batcher[int, int], worker: Worker, later: int) -> list[int]:
    worker.hold.clear()
    first = asyncio.ensure_future(batcher(0))
    await worker.started.wait()
    rest = [asyncio.ensure_future(batcher(item)) for item in range(1, later + 1)]
    await asyncio.sleep(0.05)  # several wait timeouts: the items wait for the worker, not a timer
    worker.hold.set()
    return list(await asyncio.gather(first, *rest))


def test_items_that_arrive_while_a_batch_runs_share_the_next_batch() -> None:
    worker = Worker()
    batcher = Batcher(worker, max_batch_size=16, batch_wait_timeout_s=0.005)
    results = asyncio.run(_submit_while_the_first_batch_runs(batcher, worker, later=5))
    assert results == [0, 10, 20, 30, 40, 50]
    assert worker.batches == [[0], [1, 2, 3, 4, 5]]


def test_a_batch_never_exceeds_the_cap_and_a_new_cap_applies_to_the_next_batch() -> None:
    worker = Worker()
    batcher = Batcher(worker, max_batch_size=4, batch_wait_timeout_s=0.0)

    async def scenario() -> None:
        await _submit_while_the_first_batch_runs(batcher, worker, later=10)
        batcher.max_batch_size = 3
        worker.started.clear()
        await _submit_while_the_first_batch_runs(batcher, worker, later=7)

    asyncio.run(scenario())
    assert [len(batch) for batch in worker.batches] == [1, 4, 4, 2, 1, 3, 3, 1]
    assert [item for batch in worker.batches[:4] for item in batch] == list(range(11))


def test_a_lone_item_waits_the_timeout_for_company_and_no_longer() -> None:
    worker = Worker()
    batcher = Batcher(worker, max_batch_size=8, batch_wait_timeout_s=0.2)

    async def scenario() -> tuple[float, float]:
        started = time.monotonic()
        alone = asyncio.ensure_future(batcher(1))
        await asyncio.sleep(0.1)
        joined = asyncio.ensure_future(batcher(2))  # inside the first item's wait: same batch
        await asyncio.gather(alone, joined)
        waited = time.monotonic() - started
        # A full batch goes at once, whatever the timeout.
        started = time.monotonic()
        await asyncio.gather(*(batcher(item) for item in range(8)))
        return waited, time.monotonic() - started

    waited, full = asyncio.run(scenario())
    assert worker.batches == [[1, 2], list(range(8))]
    assert 0.19 <= waited < 0.5
    assert full < 0.15


def test_the_wait_counts_from_an_items_arrival_so_an_item_that_waited_through_a_batch_goes_at_once() -> None:
    batches: list[tuple[float, list[int]]] = []

    async def slow(items: list[int]) -> list[int]:
        batches.append((time.monotonic(), items))
        await asyncio.sleep(0.3)
        return items

    batcher = Batcher(slow, max_batch_size=8, batch_wait_timeout_s=0.2)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher(1))  # waits 0.2 s alone, then runs 0.3 s
        await asyncio.sleep(0.25)
        await asyncio.gather(first, batcher(2))  # arrives at 0.25: its wait is over before the worker is free

    asyncio.run(scenario())
    (first_at, first), (second_at, second) = batches
    assert (first, second) == ([1], [2])
    # The second batch starts when the first returns (0.3 s later), not a further timeout after.
    assert 0.28 <= second_at - first_at < 0.45


def test_an_exception_reaches_every_item_of_its_batch_and_the_batcher_goes_on() -> None:
    calls: list[list[int]] = []

    async def fails_on_seven(items: list[int]) -> list[int]:
        calls.append(items)
        if 7 in items:
            raise ValueError("seven")
        return items

    batcher = Batcher(fails_on_seven, max_batch_size=4, batch_wait_timeout_s=0.05)

    async def scenario() -> tuple[list[object], int]:
        outcomes = await asyncio.gather(batcher(6), batcher(7), return_exceptions=True)
        return outcomes, await batcher(8)

    outcomes, after = asyncio.run(scenario())
    assert calls == [[6, 7], [8]]
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    assert after == 8


def test_a_batch_returning_the_wrong_number_of_results_fails_its_items() -> None:
    async def drops_one(items: list[int]) -> list[int]:
        return items[1:]

    batcher = Batcher(drops_one, max_batch_size=4, batch_wait_timeout_s=0.05)

    async def scenario() -> list[object]:
        return await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, RuntimeError) and "2 items returned 1" in str(outcome) for outcome in outcomes)


def test_an_item_whose_caller_is_cancelled_never_runs() -> None:
    worker = Worker()
    batcher = Batcher(worker, max_batch_size=8, batch_wait_timeout_s=0.0)

    async def scenario() -> list[int]:
        worker.hold.clear()
        first = asyncio.ensure_future(batcher(0))
        await worker.started.wait()
        gone = asyncio.ensure_future(batcher(1))
        kept = asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        worker.hold.set()
        return [await first, await kept]

    assert asyncio.run(scenario()) == [0, 20]
    assert worker.batches == [[0], [2]]


def test_a_batcher_serves_a_later_event_loop() -> None:
    worker = Worker()
    batcher = Batcher(worker, max_batch_size=2, batch_wait_timeout_s=0.0)
    assert asyncio.run(batcher(1)) == 10
    assert asyncio.run(batcher(2)) == 20
