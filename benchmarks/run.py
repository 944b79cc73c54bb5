"""The benchmark suite in one command: raw baseline, then every server under the same load.

    python -m benchmarks.run --quick        # resnet18, 640x480, a short sweep (under 10 minutes)
    python -m benchmarks.run                # every model and size, 3 interleaved repeats

Writes benchmarks/results/results.json, results.md and the plots; prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from benchmarks import report
from benchmarks.images import SIZES, jpeg_images
from benchmarks.load import closed_loop, open_loop
from benchmarks.pipeline import MODELS
from benchmarks.raw import in_processes
from benchmarks.servers import BATCH_WAIT_S, SERVERS, Running, make_server

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def bench_server(name: str, model: str, size: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Start one server, sweep the closed-loop concurrencies, then the open-loop rates; stop it."""
    server = make_server(name, model, args.port, args.threads, args.max_batch_size, args.batch_wait_s, args.replicas)
    image = jpeg_images(size)[0]
    body, content_type = server.body(image)
    running = Running(server, logs / f"{name}-{model}-{size}.log")
    try:
        cold_start_s = running.wait_ready(image)
        closed_loop(server.url, body, content_type, 8, args.warmup_s)
        rows = []
        for concurrency in args.concurrency:
            cpu0 = running.cpu_seconds()
            row = closed_loop(server.url, body, content_type, concurrency, args.step_s)
            row["server_cpu_ms_per_image"] = (running.cpu_seconds() - cpu0) * 1000.0 / max(row["ok"], 1)
            rows.append(row)
        saturation = max(row["throughput"] for row in rows)
        for fraction in args.open_loop:
            cpu0 = running.cpu_seconds()
            rate = max(saturation * fraction, 0.5)
            row = open_loop(server.url, body, content_type, rate, open_seconds(rate, args.step_s, args.open_answers))
            row["fraction_of_saturation"] = fraction
            row["server_cpu_ms_per_image"] = (running.cpu_seconds() - cpu0) * 1000.0 / max(row["ok"], 1)
            rows.append(row)
        rss = running.rss_bytes()
    finally:
        running.stop()
    return {"server": name, "cold_start_s": cold_start_s, "rows": rows, "rss_bytes": rss}


def open_seconds(rate: float, step_s: float, answers: int) -> float:
    """An open-loop step's length at `rate` per second: `step_s`, or longer where that would send
    fewer than `answers` requests. A p99 of n answers rests on the n/100 slowest: of 90, on one."""
    return max(step_s, answers / rate)


def median_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step (concurrency or rate fraction), the median of every figure over the repeats."""
    steps: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["rows"]:
            key = (row["mode"], row.get("concurrency", row.get("fraction_of_saturation", 0.0)))
            steps.setdefault(key, []).append(row)
    out = []
    for (mode, step), rows in steps.items():
        merged: dict[str, Any] = {"mode": mode, "step": step, "repeats": len(rows)}
        for field, value in rows[0].items():
            if isinstance(value, int | float) and field not in ("concurrency", "fraction_of_saturation"):
                merged[field] = statistics.median(float(r[field]) for r in rows)
        out.append(merged)
    return out


def main() -> None:
    cores = psutil.cpu_count(logical=True) or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18, 640x480, 4 steps of 4 s, 1 repeat")
    parser.add_argument("--models", nargs="+", choices=MODELS)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES))
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--concurrency", nargs="+", type=int)
    parser.add_argument("--open-loop", nargs="*", type=float, help="rates as fractions of the saturation throughput")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--step-s", type=float)
    parser.add_argument(
        "--open-answers",
        type=int,
        default=0,
        help="lengthen each open-loop step past --step-s until it sends this many requests",
    )
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--raw-s", type=float, help="seconds of each raw-pipeline measurement")
    parser.add_argument("--replicas", type=int, default=cores, help="model replicas (LitServe: workers)")
    parser.add_argument("--threads", type=int, help="torch threads per replica (default: cores / replicas)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-s", type=float, default=BATCH_WAIT_S)
    parser.add_argument("--port", type=int, default=8190)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.threads = args.threads or max(1, cores // args.replicas)
    quick = args.quick
    args.models = args.models or (["resnet18"] if quick else list(MODELS))
    args.sizes = args.sizes or (["640x480"] if quick else sorted(SIZES))
    args.concurrency = args.concurrency or ([1, 4, 16, 32] if quick else [1, 2, 4, 8, 16, 32, 64])
    args.open_loop = args.open_loop if args.open_loop is not None else [0.5, 0.9]
    args.repeats = args.repeats or (1 if quick else 3)
    args.step_s = args.step_s or (4.0 if quick else 10.0)
    raw_s = args.raw_s or (4.0 if quick else 10.0)

    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cases": [],
    }
    for model in args.models:
        for size in args.sizes:
            case: dict[str, Any] = {"model": model, "size": size, "raw": [], "servers": {}}
            # The ceiling: one image at a time at the server's threads per replica (latency), and
            # full batches in as many processes as the server has replicas (throughput).
            layouts = [(1, 1), (args.max_batch_size, args.replicas)]
            if args.replicas > 1:  # single images on every replica's core (resnet50 on CPU: faster
                # than batches of 16), and one process on every core, for the record
                layouts += [(1, args.replicas), (args.max_batch_size, 1)]
            for batch, processes in layouts:
                whole = batch > 1 and processes == 1 and args.replicas > 1  # one process on every core
                threads = cores if whole else args.threads
                case["raw"].append(in_processes(model, size, batch, threads, raw_s, processes))
                got = case["raw"][-1]
                print(f"raw {model} {size} batch {batch} x{processes} ({threads} threads): {got['images_per_s']:.1f}/s")
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.servers}
            for repeat in range(args.repeats):
                # Interleaved: each repeat starts with a different server, so drift on a shared
                # machine spreads over all of them.
                order = args.servers[repeat % len(args.servers) :] + args.servers[: repeat % len(args.servers)]
                for name in order:
                    run = bench_server(name, model, size, args, logs)
                    runs[name].append(run)
                    best = max(row["throughput"] for row in run["rows"] if row["mode"] == "closed")
                    print(f"{name} {model} {size} repeat {repeat}: {best:.1f} images/s", flush=True)
            for name, server_runs in runs.items():
                case["servers"][name] = {
                    "cold_start_s": statistics.median(r["cold_start_s"] for r in server_runs),
                    "rss_bytes": server_runs[-1]["rss_bytes"],
                    "rows": median_rows(server_runs),
                    "runs": server_runs,
                }
            results["cases"].append(case)
            # Written after every case, so a long run that is stopped keeps what it measured.
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    markdown = report.write(results, args.out)
    print(markdown)


if __name__ == "__main__":
    main()
