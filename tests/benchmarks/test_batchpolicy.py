"""The batching-policy simulation: the replica's Batcher on a simulated clock, timed exactly."""

from __future__ import annotations

import pytest

from benchmarks.batchpolicy import SimulatedLoop, _serve, batch_seconds, compare, markdown

# 10 ms for one item, 20 ms for a batch of four: 100 items/s alone, 200 in batches of four.
CURVE = {1: 100.0, 4: 200.0}


def serve(arrivals: list[float], cap: int, wait_s: float) -> tuple[list[float], list[int]]:
    loop = SimulatedLoop()
    try:
        return loop.run_until_complete(_serve(CURVE, cap, wait_s, arrivals))
    finally:
        loop.close()


def test_batch_time_is_measured_or_linear_between_measured_sizes() -> None:
    assert batch_seconds(CURVE, 1) == pytest.approx(0.010)
    assert batch_seconds(CURVE, 4) == pytest.approx(0.020)
    assert batch_seconds(CURVE, 2) == pytest.approx(0.010 + 0.010 / 3)


def test_a_lone_item_runs_at_once_without_a_wait_and_waits_the_timeout_with_one() -> None:
    latencies, sizes = serve([0.0, 1.0], cap=4, wait_s=0.0)
    assert latencies == pytest.approx([10.0, 10.0])
    assert sizes == [1, 1]
    latencies, sizes = serve([0.0, 1.0], cap=4, wait_s=0.005)
    assert latencies == pytest.approx([15.0, 15.0])
    assert sizes == [1, 1]


def test_items_that_queue_behind_a_batch_share_the_next_one_and_the_cap_holds() -> None:
    # Five items 1 ms apart: the first runs alone (0-10 ms), the next four together (10-30 ms).
    latencies, sizes = serve([0.0, 0.001, 0.002, 0.003, 0.004], cap=4, wait_s=0.0)
    assert sizes == [1, 4]
    assert latencies == pytest.approx([10.0, 29.0, 28.0, 27.0, 26.0])
    _, sizes = serve([0.0, 0.001, 0.002, 0.003, 0.004], cap=2, wait_s=0.0)
    assert sizes == [1, 2, 2]


def test_every_policy_runs_at_every_rate_on_the_same_arrivals() -> None:
    rows = compare(CURVE, 4, 0.005, [0.3, 0.9], items=400)
    policies = [row["policy"] for row in rows]
    # At 0.3 batching off also takes the cap's rate (60/s of its 100); at 0.9 (180/s) it cannot.
    each = ["batching off", "cap 4, wait 5 ms", "cap 4, no wait"]
    assert policies == [*each, "batching off", *each]
    assert [row["items"] for row in rows] == [400] * len(rows)
    assert rows[3]["rate"] == pytest.approx(rows[2]["rate"])
    assert rows[3]["fraction"] == pytest.approx(0.6)
    by_policy = {(row["policy"], round(row["fraction"], 2)): row for row in rows}
    # The wait only ever delays: at every rate the cap without it has the lower p50.
    for fraction in (0.3, 0.9):
        assert by_policy[("cap 4, no wait", fraction)]["p50_ms"] < by_policy[("cap 4, wait 5 ms", fraction)]["p50_ms"]


def test_the_results_file_renders_its_command_and_a_row_per_policy_and_rate() -> None:
    rows = compare(CURVE, 4, 0.005, [0.3], items=50)
    settings = {"models": ["digits_cnn"], "size": "224x224", "max_batch_size": 16, "wait_s": 0.005}
    settings |= {"fractions": [0.3], "items": 50, "no_gpu_like": True}
    text = markdown({"settings": settings, "models": [{"model": "m", "items_per_s": CURVE, "cap": 4, "rows": rows}]})
    assert text.startswith(
        "`python -m benchmarks.batchpolicy --models digits_cnn --size 224x224 --wait-s 0.005 "
        "--fractions 0.3 --items 50 --no-gpu-like`:"
    )
    assert "m: forward items/s by batch size {1: 100, 4: 200}, cap 4" in text
    assert sum(line.startswith("| batching off |") for line in text.splitlines()) == 2  # own rate, the cap's
    assert "| cap 4, no wait | 60.0 (0.30) | 50 |" in text
