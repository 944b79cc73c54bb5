"""benchmarks.cpu's split of a process's CPU by thread, on a real process of Python threads, and its
measure of a bare Ray node's idle CPU."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.cpu import NATIVE, by_role, measure_ray_alone, py_spy, thread_cpu, thread_names, thread_role

# Two pool workers that spin and one that sleeps, as a replica's forward and prepare pools run.
BUSY = """
import threading, time

def spin():
    while True:
        sum(range(1000))

for name in ("forward_0", "forward_1"):
    threading.Thread(target=spin, name=name, daemon=True).start()
threading.Thread(target=time.sleep, args=(600,), name="prepare_0", daemon=True).start()
print("started", flush=True)
time.sleep(600)
"""


@pytest.fixture
def busy() -> Iterator[int]:
    with subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "started\n"
            yield proc.pid
        finally:
            proc.kill()


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("forward_0", "forward"),
        ("prepare_12", "prepare"),
        ("ThreadPoolExecutor-2_0", "ThreadPoolExecutor"),
        ("AsyncIO Thread: default", "AsyncIO Thread: default"),
        ("Thread-1 (_poll_wrapper)", "Thread-1 (_poll_wrapper)"),
        ("MainThread", "MainThread"),
    ],
)
def test_a_pools_workers_are_one_role(name: str, role: str) -> None:
    assert thread_role(name) == role


def test_threads_cpu_is_split_by_python_name_and_the_rest_is_native(busy: int) -> None:
    if py_spy() is None:
        pytest.skip("py-spy is not installed (a dev dependency: `make venv`)")
    before = thread_cpu([busy])
    time.sleep(1.5)
    after = thread_cpu([busy])
    names = {busy: thread_names(busy)}
    if not names[busy]:
        pytest.skip("py-spy cannot attach here (ptrace not permitted)")
    assert sorted(names[busy].values()) == ["MainThread", "forward_0", "forward_1", "prepare_0"]
    spent = by_role({k: v - before.get(k, 0.0) for k, v in after.items()}, names)
    # Two spinning threads on a shared machine: well over a second between them; the sleepers next to nothing.
    assert spent["forward"] > 0.5
    assert spent.get("prepare", 0.0) < 0.05
    assert spent.get("MainThread", 0.0) < 0.05
    assert set(spent) <= {"forward", "prepare", "MainThread", NATIVE}
    # A thread py-spy does not list (no Python frames) counts as native.
    assert by_role({(busy, -1): 1.0}, names) == {NATIVE: 1.0}


@pytest.mark.slow
def test_ray_alone_is_measured_by_process_with_nothing_deployed(tmp_path: Path) -> None:
    """The idle table's floor: a real Ray node started as `serve run` starts it, and no Serve."""
    percent, ready_s = measure_ray_alone(tmp_path / "ray-alone.log", settle_s=0.0, window_s=5.0)
    assert ready_s > 0
    # Only processes that used CPU in the window are listed: Ray's GCS and raylet always tick.
    assert {"ray gcs", "ray raylet"} & set(percent)
    serve = [
        g for g in percent if g.startswith(("replica:", "ray::ProxyActor", "ray::HAProxyManager", "serve controller"))
    ]
    assert not serve
    assert all(value >= 0 for value in percent.values())
