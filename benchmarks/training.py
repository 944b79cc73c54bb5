"""Serving while a model trains: :predict latency of a bundled model, idle and with a job running.

    python -m benchmarks.training --rate 10 --window-s 30 --repeats 2

Starts the shipped default config (deployments/serve_config.yaml, expanded as `make serve` runs it)
with a fresh model store, uploads a drawn data set (models/training/shapes.py), then alternates two
windows of open-loop :predict at a fixed rate on digits_cnn: one with nothing else running, one
from the moment a fine-tuning job is submitted (its start-up included) while it trains on the
resources the config reserves for training. Each training window checks that the job was still
training at its end, some epochs in. Results go to
benchmarks/results/training.json and training.md; the target is the p99 while training within 1.5x
of the idle p99.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.cpu import wait_http
from benchmarks.images import jpeg_images
from benchmarks.load import open_loop
from benchmarks.servers import REPO, Running, Server, serve_command, write_config
from deployments.ray_env import ONE_MACHINE_ENV, THROUGHPUT_ENV, host_ports_of_its_own
from deployments.topology import expand
from models.training.shapes import draw_set, pack_zip

RESULTS = REPO / "benchmarks" / "results"
TARGET_RATIO = 1.5


def training_deployment(port: int, store: Path, one_hop: tuple[str, ...] = ()) -> Server:
    """The default config on `port`, training on with its store at `store` (and `one_hop` trained
    models given applications of their own, each replica on 0.05 CPU: the laptop's shares leave
    0.15, a job's worker takes 0.1)."""
    config = yaml.safe_load((REPO / "deployments" / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["deployments"] += [{"name": name, "ray_actor_options": {"num_cpus": 0.05}} for name in one_hop]
    app["args"]["training"] = app["args"].get("training", {}) | {
        "enabled": True,
        "store": str(store),
        "one_hop": list(one_hop),
    }
    path = write_config(expand(config))
    env = THROUGHPUT_ENV | ONE_MACHINE_ENV | host_ports_of_its_own()
    return Server("default", serve_command(path), f"http://127.0.0.1:{port}", "image/jpeg", env=env)


def _job_status(http: httpx.Client, job: str) -> str:
    status: str = http.get(f"/v1/training/jobs/{job}").json()["status"]
    return status


def _wait_status(http: httpx.Client, job: str, wanted: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _job_status(http, job)
        if status in wanted:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"job {job} not {sorted(wanted)} after {timeout_s}s")


def window(url: str, image: bytes, rate: float, seconds: float) -> dict[str, Any]:
    run = open_loop(url, image, "image/jpeg", rate, seconds)
    return {k: run[k] for k in ("ok", "errors", "p50_ms", "p99_ms")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help=":predict requests per second")
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    logs = options.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    image = jpeg_images("224x224")[0]
    store = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = training_deployment(options.port, store)
    predict = f"{server.url}/v1/models/digits_cnn:predict"
    running = Running(server, logs / "training.log")
    idle: list[dict[str, Any]] = []
    busy: list[dict[str, Any]] = []
    try:
        wait_http(f"{server.url}/v2/health/ready")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            dataset = upload_shapes(http, per_class=60)
            window(predict, image, options.rate, 5.0)  # warm
            for repeat in range(options.repeats):  # interleaved: a slow spell hits both
                idle.append(window(predict, image, options.rate, options.window_s))
                body = {"name": "shapes", "base_model": "digits_cnn", "dataset": dataset, "epochs": 200, "seed": repeat}
                submitted = http.post("/v1/training/jobs", json=body)
                submitted.raise_for_status()
                job = submitted.json()["id"]
                # From the submission on: the job's start-up (Ray Train's controller, its helper
                # actors and workers: new processes) is part of what serving lives through.
                busy.append(window(predict, image, options.rate, options.window_s))
                state = http.get(f"/v1/training/jobs/{job}").json()
                epoch = (state.get("progress") or {}).get("epoch", 0)
                if state["status"] != "running" or epoch < 2:
                    raise RuntimeError(
                        f"job {job} was {state['status']} at epoch {epoch} when the window ended: "
                        "the window did not measure training (a longer --window-s)"
                    )
                busy[-1]["epochs_trained"] = epoch
                http.delete(f"/v1/training/jobs/{job}").raise_for_status()
                _wait_status(http, job, {"cancelled", "failed", "succeeded"}, 120.0)
                print(
                    f"repeat {repeat}: idle p99 {idle[-1]['p99_ms']:.1f} ms, training p99 {busy[-1]['p99_ms']:.1f} ms"
                )
    finally:
        running.stop()
    results = {
        "model": "digits_cnn",
        "rate": options.rate,
        "window_s": options.window_s,
        "repeats": options.repeats,
        "idle": idle,
        "training": busy,
        "p99_ms": {
            "idle": statistics.median(r["p99_ms"] for r in idle),
            "training": statistics.median(r["p99_ms"] for r in busy),
        },
    }
    results["p99_ratio"] = results["p99_ms"]["training"] / results["p99_ms"]["idle"]
    publish(options.out, "training", results, table(results))
    return 0


def upload_shapes(http: httpx.Client, per_class: int) -> str:
    """Upload a drawn data set (models/training/shapes.py); its id."""
    archive = pack_zip(draw_set(per_class=per_class, seed=0))
    uploaded = http.post("/v1/datasets", files={"archive": ("shapes.zip", archive, "application/zip")})
    uploaded.raise_for_status()
    dataset: str = uploaded.json()["id"]
    return dataset


def publish(out: Path, name: str, results: dict[str, Any], lines: list[str]) -> None:
    """`results` as <out>/<name>.json, its table as <name>.md, and the table printed."""
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def table(results: dict[str, Any]) -> list[str]:
    """The measured windows as a Markdown table (docs/benchmarks.md includes it)."""
    lines = [
        f"digits_cnn :predict at {results['rate']:g}/s open loop, {results['window_s']:g} s windows, "
        f"{results['repeats']} interleaved repeats (medians):",
        "",
        "| window | p50 ms | p99 ms | answers | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("idle", "training"):
        runs = results[kind]
        p50 = statistics.median(r["p50_ms"] for r in runs)
        lines.append(
            f"| {kind} | {p50:.1f} | {results['p99_ms'][kind]:.1f} | {sum(r['ok'] for r in runs)} "
            f"| {sum(r['errors'] for r in runs)} |"
        )
    verdict = "within" if results["p99_ratio"] <= TARGET_RATIO else "over"
    lines += ["", f"p99 while training / idle: {results['p99_ratio']:.2f} ({verdict} the {TARGET_RATIO}x target)"]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
