"""Dynamic batching for the model replica: when batches form, and how large they may grow.

`Batcher` forms a batch when the replica's one forward worker is free, from every item waiting
then, as Triton's dynamic batcher and LitServe do. Ray Serve's `serve.batch` forms its next
batch while the previous one runs (`_BatchQueue._process_batches` takes a batch, starts it as a
task and goes on to the next; the `max_concurrent_batches` semaphore only holds the started
batch back): under load an item that arrives while the forward computes opens a batch that
waits `batch_wait_timeout_s`, takes the one or two items come meanwhile and queues behind the
running batch, so batches stay at one or two items however many wait (docs/benchmarks.md has
both measured side by side).

Batch caps that buy throughput, not only latency: measured at warm-up, then (optionally) tuned live.

A batch of b items makes each of them wait for all b, so a larger cap is worth it only where it
buys throughput. At warm-up a replica times its forward at each batch size up to
`max_batch_size` (`measure_throughput`) and keeps the smallest size past which the next ones
stop gaining (`choose_batch_cap`): on a CPU where batches of 16 run barely faster per item than
single items, that cap is 1 or 2, not 16.

Live, an optional SLO controller moves the cap under that measured one. The AIMD idea of Clipper
(Crankshaw et al., NSDI 2017): grow the batch cap additively while batches fill up and their
items finish well inside the latency budget; back off multiplicatively as soon as they do not.
Ray Serve, Triton and LitServe take a fixed `max_batch_size` (Triton's `preferred_batch_size`
and queue delay are fixed too); the best fixed value depends on the load and the hardware,
which is what the measurement and the controller find at run time.

Pure Python (no Ray, no torch), so all three are unit-tested on synthetic curves, latencies and
batches.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# A batch twice as large must serve at least this much more items/s to be worth its latency: a
# gain past the noise of timing a forward on a shared machine (rounds differ by about 5%). Low on
# purpose: a batch forms only from items already waiting (`Batcher`), so a larger cap adds latency
# only while items queue, where capacity counts most; and a forward timed alone understates what
# batches save when serving (resnet18 on 2 cores: docs/benchmarks.md, "The measured cap").
MIN_GAIN_PER_DOUBLING = 0.05
# Timed rounds (one forward of each size per round) after each size's untimed run; each size's
# median counts. Cheap models get more rounds, up to MEASURE_MAX_ROUNDS, while the rounds have
# taken under MEASURE_MIN_TIMED_S in all.
MEASURE_RUNS = 3
MEASURE_MAX_ROUNDS = 15
MEASURE_MIN_TIMED_S = 0.25
# Sizes grow until one batch takes longer than this, or the next size would pass the budget.
MEASURE_BATCH_LIMIT_S = 1.0
MEASURE_BUDGET_S = 3.0


def batch_sizes(max_batch_size: int) -> list[int]:
    """The sizes measured for a cap: the powers of two below `max_batch_size`, and `max_batch_size`."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def measure_throughput(
    run: Callable[[int], object],
    sizes: Sequence[int],
    known: Mapping[int, float],
    *,
    runs: int = MEASURE_RUNS,
    batch_limit_s: float = MEASURE_BATCH_LIMIT_S,
    budget_s: float = MEASURE_BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[int, float], str | None]:
    """Items/s of `run(size)` (one forward of `size` items) at each size of `sizes` not in `known`.

    Sizes are taken in increasing order, each with one untimed run, until a batch (that run, or a
    known size's) took over `batch_limit_s`, or the next size, extrapolated from the last, would
    take the whole measurement past `budget_s`. The new sizes are then timed in rounds of one run
    each, so that a slow spell of a shared machine slows every size alike, not the one measured
    then: `runs` rounds, more while cheap (see MEASURE_MIN_TIMED_S). A size whose untimed run alone
    took over `batch_limit_s` keeps that run. Returns the new sizes' items/s and, when it stopped
    before the largest size, why.
    """
    started = clock()
    first: dict[int, float] = {}  # the new sizes' untimed runs (s)
    stopped = None
    last: tuple[int, float] | None = None  # the largest size so far and the seconds of one batch of it
    for size in sorted(sizes):
        if last is not None and last[1] > batch_limit_s:
            stopped = f"stopped before batch {size}: batch {last[0]} took {last[1]:.2f}s"
            break
        if size in known:
            last = (size, size / known[size])
            continue
        if last is not None:
            owed = runs * sum(first.values())  # the timed rounds still to come for the sizes so far
            if clock() - started + owed + (runs + 1) * last[1] * size / last[0] > budget_s:
                stopped = f"stopped before batch {size}: it would pass the {budget_s:g}s budget"
                break
        first[size] = _timed(run, size, clock)
        last = (size, first[size])
    samples: dict[int, list[float]] = {size: [] for size, seconds in first.items() if seconds <= batch_limit_s}
    rounds_started = clock()
    rounds = 0
    while samples and (
        rounds < runs or (rounds < MEASURE_MAX_ROUNDS and clock() - rounds_started < MEASURE_MIN_TIMED_S)
    ):
        for size, timings in samples.items():
            timings.append(_timed(run, size, clock))
        rounds += 1
    seconds = first | {size: statistics.median(timings) for size, timings in samples.items()}
    return {size: size / max(value, 1e-9) for size, value in seconds.items()}, stopped


def _timed(run: Callable[[int], object], size: int, clock: Callable[[], float]) -> float:
    started = clock()
    run(size)
    return clock() - started


def choose_batch_cap(items_per_s: Mapping[int, float], min_gain: float = MIN_GAIN_PER_DOUBLING) -> int:
    """The smallest measured batch size past which larger batches stop paying for their latency.

    That is the smallest size b that no larger measured size s beats by `min_gain` per doubling:
    items/s(s) < items/s(b) x (1 + min_gain) ** log2(s / b). Looking at every larger size, not
    only the next, lets a noisy dip on the way up not stop the climb when a real gain lies
    beyond it. A flat curve gives 1, one that keeps gaining its largest size; an empty one 1.
    """
    sizes = sorted(items_per_s)
    for index, size in enumerate(sizes):
        bar = items_per_s[size]
        if all(items_per_s[s] < bar * (1.0 + min_gain) ** math.log2(s / size) for s in sizes[index + 1 :]):
            return size
    return 1


class SloBatchController:
    """Holds the p99 latency of items under `target_p99_ms` by choosing the batch cap.

    An item's time in the replica's batch path is its queue wait (for its batch to fill, for the
    batches ahead of it) plus its own batch's time; the controller holds the p99 of that sum, over
    the items of recent batches, under `target - batch wait timeout`. The timeout is kept back
    as margin for what the controller does not see: decoding and preprocessing before an item is
    queued, postprocessing after. The cap never exceeds `max_batch_size` (the replica's measured
    cap, where it measures one).
    """

    def __init__(
        self,
        target_p99_ms: float,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        *,
        window: int = 32,
        backoff: float = 0.9,
        headroom: float = 0.8,
    ) -> None:
        if target_p99_ms <= 0:
            raise ValueError("target_p99_ms must be positive")
        self.target_p99_ms = target_p99_ms
        self.max_batch_size = max_batch_size
        self.budget_ms = max(target_p99_ms - batch_wait_timeout_s * 1000.0, 0.0)
        self.cap = 1  # start small: the first batches measure the model's cost at low latency
        # Per batch: its items' latencies (queue wait + batch time, ms) and whether it reached the cap.
        self._window: deque[tuple[list[float], bool]] = deque(maxlen=window)
        self._backoff = backoff
        self._headroom = headroom

    def _p99(self) -> float:
        ordered = sorted(ms for latencies, _ in self._window for ms in latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    def observe(self, batch_size: int, batch_ms: float, queue_wait_ms: Sequence[float]) -> int | None:
        """Record one executed batch and its items' queue waits (ms, one per item); the new cap when
        it changes, else None."""
        latencies = [wait + batch_ms for wait in queue_wait_ms] or [batch_ms]
        self._window.append((latencies, batch_size >= self.cap))
        # Decide on a few batches at the current cap, not on one noisy sample.
        if len(self._window) < min(8, self._window.maxlen or 8):
            return None
        filled = sum(full for _, full in self._window)
        p99 = self._p99()
        new = self.cap
        if p99 > self.budget_ms and self.cap > 1:
            new = max(1, min(self.cap - 1, math.floor(self.cap * self._backoff)))
        elif p99 < self._headroom * self.budget_ms and 2 * filled >= len(self._window):
            # Only grow when batches actually reach the cap: a cap nobody fills changes nothing.
            new = min(self.max_batch_size, self.cap + 1)
        if new == self.cap:
            return None
        self.cap = new
        self._window.clear()
        return new


class Batcher(Generic[ItemT, ResultT]):
    """Batches items for one worker: `run` gets each batch once the previous one has returned.

    A batch takes every item waiting, up to `max_batch_size`, when the worker is free. While fewer
    wait, it waits for more until its oldest item has waited `batch_wait_timeout_s` since it
    arrived, so an item that waited through the previous batch goes at once. At 0 (the replicas'
    default) the worker never idles while an item waits: batches grow only from items that queued
    while the previous batch ran, which a wait can only delay (benchmarks/batchpolicy.py). Both settings are
    read for each batch, so changing them applies to the next one. `run` returns one result per
    item, in order; its exception goes to every item of its batch. An item whose caller is
    cancelled (a client gone) leaves the queue without running.
    """

    def __init__(
        self,
        run: Callable[[list[ItemT]], Awaitable[Sequence[ResultT]]],
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._run = run
        self._queue: deque[tuple[ItemT, float, asyncio.Future[ResultT]]] = deque()
        # Created on the event loop of the first call (a replica builds this before its loop runs).
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, item: ItemT) -> ResultT:
        """`item`'s result, once a batch with it has run."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._work(self._arrived))
        future: asyncio.Future[ResultT] = loop.create_future()
        self._queue.append((item, loop.time(), future))
        assert self._arrived is not None
        self._arrived.set()
        return await future

    def _waiting(self) -> int:
        """Items waiting, after dropping cancelled ones from the front (one further back is
        skipped when its batch is taken): O(1) on each arrival, not a scan of the queue."""
        while self._queue and self._queue[0][2].done():
            self._queue.popleft()
        return len(self._queue)

    async def _work(self, arrived: asyncio.Event) -> None:
        # The loop's clock (monotonic), which its timeouts run on too.
        clock = asyncio.get_running_loop().time
        while True:
            while not self._waiting():
                arrived.clear()
                await arrived.wait()
            cap = max(1, self.max_batch_size)
            deadline = self._queue[0][1] + self.batch_wait_timeout_s
            while self._waiting() < cap and (remaining := deadline - clock()) > 0:
                arrived.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await arrived.wait()
                except TimeoutError:
                    break
            batch: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
            while self._queue and len(batch) < cap:
                item, _, future = self._queue.popleft()
                if not future.done():
                    batch.append((item, future))
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = list(await self._run([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items returned {len(results)} results")
        except Exception as exc:  # every caller of the batch gets it; the worker goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
