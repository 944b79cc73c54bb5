"""The raw baseline: the in-process pipeline in a tight loop; images/s and CPU-ms per image.

python -m benchmarks.raw --model resnet18 --size 640x480 --batch 16 --threads 2 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks.images import SIZES, jpeg_images
from benchmarks.pipeline import MODELS, Pipeline


def measure(model: str, size: str, batch: int, threads: int, seconds: float, backend: str = "eager") -> dict[str, Any]:
    """Run batches of `batch` images through the pipeline for `seconds`; throughput and cost."""
    torch.set_num_threads(threads)
    pipeline = Pipeline(model, backend=backend)
    images = jpeg_images(size)
    batches = [[images[(i * batch + j) % len(images)] for j in range(batch)] for i in range(len(images))]
    for warm in batches[:2]:
        pipeline(warm)
    latencies = []
    done = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        started = time.perf_counter()
        pipeline(batches[done % len(batches)])
        latencies.append((time.perf_counter() - started) * 1000.0)
        done += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    count = done * batch
    return {
        "model": model,
        "backend": backend,
        "size": size,
        "batch": batch,
        "threads": threads,
        "images": count,
        "images_per_s": count / wall,
        "cpu_ms_per_image": cpu * 1000.0 / count,
        "batch_p50_ms": statistics.median(latencies),
    }


def in_processes(model: str, size: str, batch: int, threads: int, seconds: float, processes: int = 1) -> dict[str, Any]:
    """The raw pipeline in `processes` processes at once (nothing else loaded); summed throughput."""
    command = [sys.executable, "-m", "benchmarks.raw", "--model", model, "--size", size, "--batch", str(batch)]
    command += ["--threads", str(threads), "--seconds", str(seconds)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outs = [json.loads(p.communicate(timeout=seconds + 300)[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"raw pipeline failed: {command}")
    result: dict[str, Any] = outs[0] | {
        "processes": processes,
        "images_per_s": sum(o["images_per_s"] for o in outs),
        "cpu_ms_per_image": statistics.mean(o["cpu_ms_per_image"] for o in outs),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="resnet18")
    parser.add_argument("--size", choices=sorted(SIZES), default="640x480")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.size, args.batch, args.threads, args.seconds)))


if __name__ == "__main__":
    main()
