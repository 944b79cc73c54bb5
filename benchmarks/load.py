"""Load generators: `hey` for closed-loop concurrency, an asyncio client for open-loop fixed rates.

Both report their own CPU time: on a 2-core machine the client competes with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import io
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import numpy as np


def percentiles(latencies_ms: list[float]) -> dict[str, Any]:
    """p50/p90/p99 and every whole percentile of `latencies_ms` (NaN and empty when there are none)."""
    if not latencies_ms:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "quantiles_ms": []}
    quantiles = np.percentile(np.asarray(latencies_ms), np.arange(101))
    return {
        "p50_ms": float(quantiles[50]),
        "p90_ms": float(quantiles[90]),
        "p99_ms": float(quantiles[99]),
        # Every percentile, for the latency CDF plots.
        "quantiles_ms": [round(float(q), 3) for q in quantiles],
    }


class HeyRun(NamedTuple):
    """What one `hey -o csv` run measured: every request, with its send offset from hey's start."""

    ok_ms: list[float]  # latencies of the 2xx answers
    errors: int  # everything else
    first_sent_s: float  # offset of the first request sent
    last_done_s: float  # offset of the last answer received

    @property
    def measured_s(self) -> float:
        """First request sent to last answer received: the time the answers took."""
        return max(self.last_done_s - self.first_sent_s, 1e-9)


def parse_hey_csv(text: str) -> HeyRun:
    """Every request of a `hey -o csv` run: 2xx latencies in ms, the rest counted, first send and last answer."""
    ok, errors, first, last = [], 0, float("inf"), 0.0
    for row in csv.DictReader(io.StringIO(text)):
        status = int(row["status-code"])
        if 200 <= status < 300:
            ok.append(float(row["response-time"]) * 1000.0)
        else:
            errors += 1
        sent = float(row["offset"])
        first = min(first, sent)
        last = max(last, sent + float(row["response-time"]))
    return HeyRun(ok, errors, first if first != float("inf") else 0.0, last)


def measured_rate(answers: int, measured_s: float, nominal_s: float) -> dict[str, float]:
    """Answers per second of measured time, and the share of it spent past the nominal end
    (finishing the requests then in flight)."""
    return {
        "throughput": answers / measured_s,
        "measured_s": measured_s,
        "tail_share": max(measured_s - nominal_s, 0.0) / measured_s,
    }


def hey_binary() -> str:
    """Path of the `hey` load generator (Debian package `hey`)."""
    path = shutil.which("hey")
    if path is None:
        raise RuntimeError("the benchmarks need `hey` (apt-get install hey)")
    return path


def closed_loop(url: str, body: bytes, content_type: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` clients each sending the next request as soon as the last answered, for `seconds`."""
    with tempfile.NamedTemporaryFile(suffix=".body") as file:
        Path(file.name).write_bytes(body)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(
            [hey_binary(), "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", content_type,
             "-D", file.name, "-t", "60", "-o", "csv", url],
            capture_output=True, text=True, timeout=seconds + 120, check=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = parse_hey_csv(result.stdout)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "seconds": seconds,
        "ok": len(run.ok_ms),
        "errors": run.errors,
        # From measured time, as the raw ceiling: hey lets the requests in flight at its deadline
        # finish and reports them, so dividing by the nominal `seconds` would count the tail for free
        # (most for the slowest server at the most clients).
        **measured_rate(len(run.ok_ms), run.measured_s, seconds),
        "client_cpu_s": client_cpu,
        "wall_s": wall,
        **percentiles(run.ok_ms),
    }


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """The objects alive so far kept out of the garbage collector's passes while the client runs.

    The open-loop client runs in the benchmark's own process, whose heap holds torch and whatever
    ran before (half a million objects). A full collection walks all of them: 0.2-0.34 s measured,
    during which the client neither sends nor reads, so every request in flight was charged a stall
    that was the client's. Frozen, a collection walks only the client's own new objects.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _open_loop(
    url: str, body: bytes, content_type: str, rate: float, seconds: float, answers: list[bytes] | None = None
) -> tuple[list[float], int, float]:
    """(2xx latencies in ms, other answers, seconds from the first send to the last answer); each 2xx
    answer's body is appended to `answers`, in the latencies' order, when it is given."""
    latencies: list[float] = []
    errors = 0
    last_done = 0.0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(scheduled: float) -> None:
            nonlocal errors, last_done
            try:
                async with session.post(url, data=body, headers={"Content-Type": content_type}) as response:
                    answer = await response.read()
                    if response.status == 200:
                        # From the scheduled send time: a server that falls behind is charged for the
                        # queue it builds (no coordinated omission).
                        latencies.append((time.perf_counter() - scheduled) * 1000.0)
                        if answers is not None:
                            answers.append(answer)
                    else:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            last_done = max(last_done, time.perf_counter())

        tasks = []
        start = time.perf_counter()
        count = int(rate * seconds)
        for index in range(count):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    return latencies, errors, max(last_done - start, 1e-9)


def open_loop_by(
    url: str, body: bytes, content_type: str, rate: float, seconds: float, key: Callable[[bytes], str]
) -> dict[str, Any]:
    """open_loop's run, its latencies also split by `key` of each answer's body (say, the version that
    answered): {"all": {...}, "by": {key: {"ok", "share", "p50_ms", "p90_ms", "p99_ms"}}}."""
    answers: list[bytes] = []
    with _heap_frozen():
        latencies, errors, measured = asyncio.run(_open_loop(url, body, content_type, rate, seconds, answers))
    groups: dict[str, list[float]] = {}
    for latency, answer in zip(latencies, answers, strict=True):
        groups.setdefault(key(answer), []).append(latency)
    split = {
        name: {"ok": len(group), "share": len(group) / max(len(latencies), 1)}
        | {k: v for k, v in percentiles(group).items() if k != "quantiles_ms"}
        for name, group in sorted(groups.items())
    }
    overall = {k: v for k, v in percentiles(latencies).items() if k != "quantiles_ms"}
    return {
        "all": {"ok": len(latencies), "errors": errors, **measured_rate(len(latencies), measured, seconds)} | overall,
        "by": split,
    }


def open_loop(url: str, body: bytes, content_type: str, rate: float, seconds: float) -> dict[str, Any]:
    """Requests sent at a fixed `rate` per second for `seconds`, whatever the server's pace."""
    with _heap_frozen():
        cpu0, wall0 = time.process_time(), time.perf_counter()
        latencies, errors, measured = asyncio.run(_open_loop(url, body, content_type, rate, seconds))
        wall = time.perf_counter() - wall0
        client_cpu_s = time.process_time() - cpu0
    return {
        "mode": "open",
        "rate": rate,
        "seconds": seconds,
        "ok": len(latencies),
        "errors": errors,
        **measured_rate(len(latencies), measured, seconds),
        "client_cpu_s": client_cpu_s,
        "wall_s": wall,
        **percentiles(latencies),
    }
