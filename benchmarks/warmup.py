"""The first request after a replica reports ready, against the steady median, with and without warm-up.

    python -m benchmarks.warmup --models digits_cnn resnet18 --repeats 3

Each start serves the model twice, as `<model>_warm` (the default: the replica runs its forward at
batch 1 and at its batch cap before it reports ready, deployments/image_model.py) and as
`<model>_cold` (`warmup: false`). Once Serve reports both ready (/v2/models/<name>/ready), each
gets one request, timed, then `--requests` more one at a time: the ratio of the first to their
median is what a client pays for arriving first. The server is restarted for every repeat.

The same is measured on the model replica's own code, built in this process without Serve
(`where: replica`), to tell the model's first-call costs from the serving path's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.images import SIZES, jpeg_images
from benchmarks.pipeline import MODELS, weights_for
from benchmarks.servers import Running, Server, free_ports, serve_command, vision_maas_config, write_config
from contract.params import ClassificationParams
from deployments.args import ArtifactsArgs, LimitsArgs, ModelArgs
from deployments.image_model import ImageModel
from deployments.ray_env import ONE_MACHINE_ENV, THROUGHPUT_ENV, host_ports_of_its_own

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"warm": True, "cold": False}


def wait_ready(base: str, names: list[str], running: Running, timeout_s: float = 300.0) -> float:
    """Seconds from start until every name's replicas are ready, as Serve reports them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"the server exited with {running.process.returncode}; see {running.log}")
        try:
            if all(httpx.get(f"{base}/v2/models/{n}/ready", timeout=5).status_code == 200 for n in names):
                return time.monotonic() - running.started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not ready after {timeout_s}s; see {running.log}")


def timed(client: httpx.Client, url: str, image: bytes) -> float:
    started = time.perf_counter()
    response = client.post(url, content=image, headers={"Content-Type": "image/jpeg"})
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    response.raise_for_status()
    return elapsed_ms


def measure_start(model: str, image: bytes, requests: int, log: Path, cold_first: bool) -> list[dict[str, Any]]:
    """One server start: the first request and the steady median of each variant."""
    threads = psutil.cpu_count(logical=True) or 1
    batching = {
        f"{model}_{variant}": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005, "warmup": warm}
        for variant, warm in VARIANTS.items()
    }
    (port,) = free_ports(1)
    config = write_config(vision_maas_config(model, port, batching, round(0.9 * threads / 2, 3), threads))
    base = f"http://127.0.0.1:{port}"
    env = THROUGHPUT_ENV | ONE_MACHINE_ENV | host_ports_of_its_own()
    server = Server(
        "vision-maas", serve_command(config), f"{base}/v1/models/{model}_warm:predict", "image/jpeg", env=env
    )
    running = Running(server, log)
    rows = []
    try:
        ready_s = wait_ready(base, list(batching), running)
        with httpx.Client(timeout=120.0) as client:
            # Alternate which variant answers first, so neither always meets a cooler ingress.
            names = sorted(batching, reverse=not cold_first)
            firsts = {name: timed(client, f"{base}/v1/models/{name}:predict", image) for name in names}
            for name in names:
                url = f"{base}/v1/models/{name}:predict"
                steady = statistics.median(timed(client, url, image) for _ in range(requests))
                variant = name.rsplit("_", 1)[1]
                rows.append(
                    {
                        "model": model,
                        "variant": variant,
                        "where": "served",
                        "ready_s": round(ready_s, 1),
                        "first_ms": round(firsts[name], 1),
                        "steady_p50_ms": round(steady, 1),
                        "first_over_p50": round(firsts[name] / steady, 2),
                    }
                )
    finally:
        running.stop()
    return rows


def measure_replica(model: str, image: bytes, requests: int, warm: bool) -> dict[str, Any]:
    """The replica's own code, built here without Serve: its first :predict and the median of the next
    ones. Run it in a fresh process (`in_fresh_process`): torch's kernel caches are per process."""
    replica: Any = ImageModel
    original = replica._warm_up
    if not warm:  # a replica as it was before warm-up: load, then straight to the first request
        replica._warm_up = lambda self: None
    try:
        built = replica(ModelArgs(name=model, weights=weights_for(model)), LimitsArgs(), ArtifactsArgs())
    finally:
        replica._warm_up = original

    async def run() -> list[float]:
        times = []
        for _ in range(requests + 1):
            started = time.perf_counter()
            await built.predict([image], ClassificationParams())
            times.append((time.perf_counter() - started) * 1000.0)
        return times

    times = asyncio.run(run())
    steady = statistics.median(times[1:])
    return {
        "model": model,
        "variant": "warm" if warm else "cold",
        "where": "replica",
        "first_ms": round(times[0], 1),
        "steady_p50_ms": round(steady, 1),
        "first_over_p50": round(times[0] / steady, 2),
    }


def in_fresh_process(model: str, image: bytes, requests: int, warm: bool) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        row: dict[str, Any] = pool.apply(measure_replica, (model, image, requests, warm))
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over starts per (model, where, variant)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for where, variant in [(w, v) for w in ("served", "replica") for v in VARIANTS]:
            group = [r for r in rows if (r["model"], r["where"], r["variant"]) == (model, where, variant)]
            if not group:
                continue
            out.append(
                {
                    "model": model,
                    "where": where,
                    "variant": variant,
                    "starts": len(group),
                    "first_ms": round(statistics.median(r["first_ms"] for r in group), 1),
                    "steady_p50_ms": round(statistics.median(r["steady_p50_ms"] for r in group), 1),
                    "first_over_p50": round(statistics.median(r["first_over_p50"] for r in group), 2),
                    "worst_first_over_p50": max(r["first_over_p50"] for r in group),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["digits_cnn", "resnet18"])
    parser.add_argument("--size", choices=sorted(SIZES), default="640x480")
    parser.add_argument("--repeats", type=int, default=3, help="server starts per model")
    parser.add_argument("--requests", type=int, default=40, help="sequential requests for the steady median")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    image = jpeg_images(args.size)[0]
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for model in args.models:
        for repeat in range(args.repeats):
            log = args.out / "logs" / f"warmup-{model}-{repeat}.log"
            started = measure_start(model, image, args.requests, log, cold_first=repeat % 2 == 0)
            for row in started:
                print(
                    f"{model} {row['variant']} start {repeat}: first {row['first_ms']:.0f} ms, "
                    f"steady p50 {row['steady_p50_ms']:.0f} ms ({row['first_over_p50']:.2f}x)",
                    flush=True,
                )
            rows += started
            for warm in (False, True):
                row = in_fresh_process(model, image, args.requests, warm)
                print(
                    f"{model} {row['variant']} replica: first {row['first_ms']:.0f} ms ({row['first_over_p50']:.2f}x)"
                )
                rows.append(row)
    summary = summarise(rows)
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "target_first_over_p50": 1.5,
        "rows": rows,
        "summary": summary,
    }
    (args.out / "warmup.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    for row in summary:
        print(row)


if __name__ == "__main__":
    main()
