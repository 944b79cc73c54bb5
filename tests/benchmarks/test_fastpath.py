"""The fast-path benchmark's HTTP table: both apps it times really serve the request it sends."""

from __future__ import annotations

import logging

from benchmarks.fastpath import http_apps


def test_http_apps_times_both_routes_on_good_answers_and_leaves_the_log_on() -> None:
    rows = http_apps(0.2, rounds=1)  # each call asserts a 200 from its app
    assert [row["app"] for row in rows] == ["catalogue application (FastAPI route)", "model application (hot route)"]
    assert all(isinstance(row["us_per_request"], float) and row["us_per_request"] > 0 for row in rows)
    assert not logging.getLogger("ray.serve").disabled
