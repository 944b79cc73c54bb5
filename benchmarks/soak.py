"""Memory soak: vision-maas at half its saturation throughput for ten minutes; resident memory over time.

    python -m benchmarks.soak --model resnet18 --minutes 10

Samples the resident memory of every server process every `--every-s` seconds. Growth is
measured from the first sample after a minute of load (allocators and caches settled) to the
last; the target is at most 5%.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.images import SIZES, jpeg_images
from benchmarks.load import closed_loop, open_loop
from benchmarks.pipeline import MODELS
from benchmarks.servers import Running, make_server

RESULTS = Path(__file__).resolve().parent / "results"

SATURATION_CLIENTS = 32  # the main run's largest closed-loop step


def growth(samples: list[dict[str, Any]], settle_s: float) -> dict[str, float]:
    """Relative RSS growth of the model replicas and of the whole server, after `settle_s`."""
    settled = [s for s in samples if s["t"] >= settle_s] or samples
    first, last = settled[0], settled[-1]
    return {
        "replicas": last["replicas_bytes"] / first["replicas_bytes"] - 1.0,
        "server": last["total_bytes"] / first["total_bytes"] - 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="resnet18")
    parser.add_argument("--size", choices=sorted(SIZES), default="640x480")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every-s", type=float, default=30.0)
    parser.add_argument("--port", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cores = psutil.cpu_count(logical=True) or 1
    server = make_server("vision-maas", args.model, args.port, 1, 16, replicas=cores)
    image = jpeg_images(args.size)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    running = Running(server, args.out / "logs" / "soak.log")
    samples: list[dict[str, Any]] = []
    try:
        cold_start_s = running.wait_ready(image)
        saturation = closed_loop(server.url, image, "image/jpeg", SATURATION_CLIENTS, 10.0)["throughput"]
        rate = saturation / 2
        print(f"saturation {saturation:.1f} images/s; soaking at {rate:.1f}/s for {args.minutes:g} min", flush=True)
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                by = running.rss_bytes()
                samples.append(
                    {
                        "t": time.monotonic() - started,
                        "replicas_bytes": sum(v for k, v in by.items() if k.startswith("ray::ServeReplica")),
                        "total_bytes": sum(by.values()),
                    }
                )
                stop.wait(args.every_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = open_loop(server.url, image, "image/jpeg", rate, args.minutes * 60.0)
        stop.set()
        sampler.join()
    finally:
        running.stop()
    result = {
        "model": args.model,
        "cold_start_s": cold_start_s,
        "saturation": saturation,
        "saturation_clients": SATURATION_CLIENTS,
        "load": {k: v for k, v in load.items() if k != "quantiles_ms"},
        "samples": samples,
        "growth": growth(samples, 60.0),
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    g = result["growth"]
    print(
        f"{args.model}: {load['ok']} requests, {load['errors']} errors, p99 {load['p99_ms']:.0f} ms; "
        f"replica RSS {samples[0]['replicas_bytes'] / 2**20:.0f} -> {samples[-1]['replicas_bytes'] / 2**20:.0f} MiB; "
        f"growth after the first minute: replicas {g['replicas']:+.1%}, whole server {g['server']:+.1%}"
    )


if __name__ == "__main__":
    main()
