"""The SLO-aware batch controller on synthetic batch latencies (no Ray)."""

from __future__ import annotations

import itertools

import pytest

from deployments.args import BatchConfig
from deployments.batching import SloBatchController


def drive(controller: SloBatchController, batch_ms: float, rounds: int, per_item_ms: float = 0.0) -> list[int]:
    """Feed full batches whose time is `batch_ms` + `per_item_ms` per item; the caps seen."""
    caps = []
    for _ in range(rounds):
        controller.observe(controller.cap, batch_ms + per_item_ms * controller.cap)
        caps.append(controller.cap)
    return caps


def test_grows_additively_while_full_batches_stay_inside_the_budget() -> None:
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=16, batch_wait_timeout_s=0.0)
    caps = drive(controller, 5.0, 400)
    assert caps[0] == 1
    assert max(b - a for a, b in itertools.pairwise(caps)) == 1  # one step at a time
    assert caps[-1] == 16  # and never past max_batch_size


def test_settles_where_the_batch_time_meets_the_budget() -> None:
    # 10 ms per item, target 200 ms, no wait: budget 100 ms per batch, so about 8-10 items.
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=64, batch_wait_timeout_s=0.0)
    caps = drive(controller, 0.0, 2000, per_item_ms=10.0)
    # It grows while a batch takes under 80% of the budget (up to 8 items = 80 ms) and stays there.
    assert set(caps[-500:]) == {8}


def test_backs_off_multiplicatively_when_batches_get_slow() -> None:
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=32, batch_wait_timeout_s=0.0)
    drive(controller, 5.0, 600)
    assert controller.cap == 32
    # The machine gets busy: every batch now takes 150 ms, over the 100 ms budget.
    caps = drive(controller, 150.0, 200)
    assert caps[-1] == 1
    assert caps[7] == 28  # the first decision after 8 batches: 32 * 0.9, floored


def test_does_not_grow_a_cap_that_batches_never_reach() -> None:
    controller = SloBatchController(target_p99_ms=200.0, max_batch_size=32, batch_wait_timeout_s=0.0)
    while controller.cap < 3:
        controller.observe(controller.cap, 5.0)
    reached = controller.cap  # a fresh window right after the change
    for _ in range(200):  # light load: batches of one, whatever the cap
        controller.observe(1, 5.0)
    assert controller.cap == reached


def test_the_wait_counts_against_the_budget() -> None:
    assert SloBatchController(100.0, 8, 0.02).budget_ms == pytest.approx(40.0)


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
