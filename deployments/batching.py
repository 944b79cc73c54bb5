"""SLO-aware adaptive batching: tune a model's batch cap from live batch latency to hold a p99 target.

The AIMD idea of Clipper (Crankshaw et al., NSDI 2017): grow the batch cap additively while
batches fill up and finish well inside the latency budget; back off multiplicatively as soon
as they do not. Ray Serve, Triton and LitServe take a fixed `max_batch_size` (Triton's
`preferred_batch_size` and queue delay are fixed too); the best fixed value depends on the
load and the hardware, which is what this controller finds at run time.

Pure Python (no Ray, no torch), so its behaviour is unit-tested on synthetic latencies.
"""

from __future__ import annotations

import math
from collections import deque


class SloBatchController:
    """Holds the p99 latency of items under `target_p99_ms` by choosing the batch cap.

    An item waits at most for the batch ahead of it, then for its own: its latency is about
    `wait + 2 x batch time` at worst, so the controller keeps the p99 batch time under
    `(target - wait) / 2`, the budget of one batch.
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
        self.budget_ms = max((target_p99_ms - batch_wait_timeout_s * 1000.0) / 2.0, 0.0)
        self.cap = 1  # start small: the first batches measure the model's cost at low latency
        self._window: deque[tuple[float, bool]] = deque(maxlen=window)  # (batch ms, reached the cap)
        self._backoff = backoff
        self._headroom = headroom

    def _p99(self) -> float:
        ordered = sorted(ms for ms, _ in self._window)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    def observe(self, batch_size: int, batch_ms: float) -> int | None:
        """Record one executed batch; the new cap when it changes, else None."""
        self._window.append((batch_ms, batch_size >= self.cap))
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
