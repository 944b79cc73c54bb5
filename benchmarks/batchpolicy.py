"""The batching policy alone: what a replica's batcher does to items' latency under open-loop load.

    python -m benchmarks.batchpolicy --models resnet18 digits_cnn

For each model the items/s by batch size of the raw pipeline's forward and postprocess
(`benchmarks.pipeline`) is timed as a replica times its forward at warm-up
(`deployments.batching.measure_throughput` on one thread, the served preprocessing's tensors;
a replica's batch runs the forward alone, so these batch times are a little long) and the
replica's cap chosen from it (`choose_batch_cap`). Then the replica's own
`Batcher` runs on an event loop whose clock is simulated, with a forward that sleeps for that
measured batch time, under Poisson arrivals at fractions of each policy's saturation (items/s at
its cap), the same arrival times for every policy. The clock jumps to the next timer whenever
nothing is ready, so every sleep and timeout is exact, the machine's load does not move the
figures, and long runs take seconds: what differs between the rows is the policy alone, when a
batch forms and how large it may grow. What it leaves out is what the served benchmark
(`benchmarks.run`) has: decoding and HTTP on the same cores as the forward, and timing noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.images import jpeg_images
from benchmarks.load import percentiles
from benchmarks.pipeline import Pipeline
from deployments.batching import Batcher, batch_sizes, choose_batch_cap, measure_throughput

RESULTS = Path(__file__).resolve().parent / "results"
# Not measured here (no GPU): a forward whose batch costs 5 ms whatever its size up to 32, the
# shape of a GPU's curve for a small model, to see the policies where batches are nearly free.
GPU_LIKE = ("GPU-like curve (assumed)", {1: 200.0, 2: 400.0, 4: 790.0, 8: 1550.0, 16: 3000.0, 32: 5600.0})


def forward_curve(model: str, size: str, max_batch_size: int) -> dict[int, float]:
    """Items/s of the model's forward (and postprocess) by batch size, on one thread."""
    torch.set_num_threads(1)
    pipeline = Pipeline(model)
    prepared = [pipeline.prepare(data) for data in jpeg_images(size)]

    def run(batch: int) -> None:
        pipeline.run([prepared[i % len(prepared)] for i in range(batch)])

    items_per_s, _ = measure_throughput(run, batch_sizes(max_batch_size), {})
    return items_per_s


def batch_seconds(items_per_s: dict[int, float], batch: int) -> float:
    """Seconds one batch of `batch` items takes: measured, or linear between the measured sizes."""
    sizes = sorted(items_per_s)
    seconds = [size / items_per_s[size] for size in sizes]
    return float(np.interp(batch, sizes, seconds))


class _SimulatedSelector(selectors.SelectSelector):
    """Waits by moving its loop's clock: the loop asks it to wait until its next timer is due."""

    def __init__(self, loop: SimulatedLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("nothing is scheduled: the simulation would wait forever")
        self._loop.now += timeout
        return []


class SimulatedLoop(asyncio.SelectorEventLoop):
    """An event loop on a simulated clock, for code that waits only on timers (no I/O, no threads)."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_SimulatedSelector(self))

    def time(self) -> float:
        return self.now


async def _serve(
    items_per_s: dict[int, float], cap: int, wait_s: float, arrivals: Sequence[float]
) -> tuple[list[float], list[int]]:
    """Each item's latency (ms) through a Batcher with a sleeping forward; the batch sizes run."""
    sizes: list[int] = []

    async def forward(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(batch_seconds(items_per_s, len(items)))
        return items

    batcher: Batcher[int, int] = Batcher(forward, cap, wait_s)
    latencies: list[float] = []

    clock = asyncio.get_running_loop().time

    async def one(item: int) -> None:
        started = clock()
        await batcher(item)
        latencies.append((clock() - started) * 1000.0)

    tasks = []
    start = clock()
    for item, due in enumerate(arrivals):
        delay = start + due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(item)))
    await asyncio.gather(*tasks)
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()  # the batcher's worker, waiting for the next item
    return latencies, sizes


def compare(
    items_per_s: dict[int, float],
    cap: int,
    wait_s: float,
    fractions: Sequence[float],
    items: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """p50/p99 of every policy at every rate: batching off, the cap with `wait_s`, the cap without a wait.

    Each policy runs at `fractions` of its own saturation, as the served benchmark offers load; and
    batching off also at the cap's rate where it can keep up with it (under 0.95 of its own
    saturation): the same arrivals for both.
    """
    off, at_once = "batching off", f"cap {cap}, no wait"
    policies = {off: (1, 0.0), f"cap {cap}, wait {wait_s * 1000:g} ms": (cap, wait_s), at_once: (cap, 0.0)}
    saturation = {name: c / batch_seconds(items_per_s, c) for name, (c, _) in policies.items()}
    rng = np.random.default_rng(seed)
    rows = []
    for fraction in fractions:
        gaps = rng.exponential(1.0, size=items)  # one stream of unit-rate gaps for every policy at this fraction
        runs = [(name, fraction * saturation[name]) for name in policies]
        batched_rate = fraction * saturation[at_once]
        if cap > 1 and batched_rate < 0.95 * saturation[off]:
            runs.append((off, batched_rate))
        for name, rate in runs:
            policy_cap, policy_wait = policies[name]
            loop = SimulatedLoop()
            try:
                latencies, sizes = loop.run_until_complete(
                    _serve(items_per_s, policy_cap, policy_wait, np.cumsum(gaps / rate).tolist())
                )
            finally:
                loop.close()
            rows.append(
                {
                    "policy": name,
                    "fraction": rate / saturation[name],
                    "rate": rate,
                    "items": len(latencies),
                    "mean_batch": float(np.mean(sizes)),
                    **{k: v for k, v in percentiles(latencies).items() if k != "quantiles_ms"},
                }
            )
    return rows


def table(model: str, items_per_s: dict[int, float], cap: int, rows: list[dict[str, Any]]) -> str:
    """The curve and the policies' rows as Markdown."""
    curve = ", ".join(f"{size}: {rate:.0f}" for size, rate in sorted(items_per_s.items()))
    lines = [
        f"{model}: forward items/s by batch size {{{curve}}}, cap {cap}",
        "",
        "| policy | rate (x saturation) | items | mean batch | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['policy']} | {row['rate']:.1f} ({row['fraction']:.2f}) | {row['items']} | "
            f"{row['mean_batch']:.2f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "digits_cnn"])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--wait-s", type=float, default=0.005, help="the wait timeout of the policy with one")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    parser.add_argument("--items", type=int, default=20_000, help="items (arrivals) of each policy at each rate")
    parser.add_argument("--no-gpu-like", action="store_true", help="leave out the assumed GPU-like curve")
    parser.add_argument("--out", type=Path, default=RESULTS / "batchpolicy.json")
    args = parser.parse_args()
    curves = [(model, forward_curve(model, args.size, args.max_batch_size)) for model in args.models]
    if not args.no_gpu_like:
        curves.append(GPU_LIKE)
    results = []
    for model, items_per_s in curves:
        cap = choose_batch_cap(items_per_s)
        rows = compare(items_per_s, cap, args.wait_s, args.fractions, args.items)
        print(table(model, items_per_s, cap, rows), flush=True)
        print(flush=True)
        results.append({"model": model, "items_per_s": items_per_s, "cap": cap, "rows": rows})
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "models": results}, indent=1) + "\n")


def markdown(data: dict[str, Any]) -> str:
    """A results file as the command that made it and one table per curve."""
    s = data["settings"]
    command = (
        f"`python -m benchmarks.batchpolicy --models {' '.join(s['models'])} --size {s['size']} "
        f"--wait-s {s['wait_s']:g} --fractions {' '.join(f'{f:g}' for f in s['fractions'])} --items {s['items']}"
        + (" --no-gpu-like" if s["no_gpu_like"] else "")
        + "`"
    )
    tables = [
        table(m["model"], {int(size): rate for size, rate in m["items_per_s"].items()}, m["cap"], m["rows"])
        for m in data["models"]
    ]
    return "\n\n".join([command + ":", *tables]) + "\n"


if __name__ == "__main__":
    main()
