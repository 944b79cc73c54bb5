"""What a canary split costs the stable share, on the one-hop route of a trained model.

    python -m benchmarks.canary --rate 20 --window-s 20 --repeats 2

Starts the shipped default config (as `make serve` runs it) with training on, a fresh model store
and the trained model `shapes` in `training.one_hop` (its own application: its replica holds the
stable version and answers HTTP itself; a canary's share goes on to the catalogue's StoreModels
over a handle). Trains two versions on a drawn data set, then alternates three windows of
open-loop `:predict` at a fixed rate, each answer's latency kept with the version that gave it:

- `stable alone`: no canary; every request answered in the model's own replica (one hop);
- `canary 20%`: the second version rolled out at 20%; the stable share still one hop, the
  canary's share one more (to StoreModels);
- `two hops`: the stable version asked for by name (`/versions/{v}:predict`), which the catalogue
  serves through StoreModels: what every request of a trained model paid before one_hop.

Results go to benchmarks/results/canary.json and canary.md.
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

from benchmarks.cpu import wait_http
from benchmarks.load import open_loop_by
from benchmarks.servers import REPO, Running
from benchmarks.training import publish, training_deployment, upload_shapes
from models.training.shapes import draw_set

RESULTS = REPO / "benchmarks" / "results"
MODEL = "shapes"
WINDOWS = ("stable alone", "canary 20%", "two hops")


def _version(answer: bytes) -> str:
    version: str = json.loads(answer)["model_version"]
    return version


def train(http: httpx.Client, dataset: str, seed: int, timeout_s: float = 600.0) -> str:
    """A new version of MODEL (a few epochs); its id."""
    body = {"name": MODEL, "base_model": "digits_cnn", "dataset": dataset, "epochs": 3, "seed": seed}
    submitted = http.post("/v1/training/jobs", json=body)
    submitted.raise_for_status()
    job = submitted.json()["id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = http.get(f"/v1/training/jobs/{job}").json()
        if state["status"] == "succeeded":
            version: str = state["version"]
            return version
        if state["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job} {state['status']}: {state.get('error')}")
        time.sleep(1.0)
    raise TimeoutError(f"job {job} still running after {timeout_s}s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.canary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help=":predict requests per second")
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--percent", type=int, default=20, help="the canary's share")
    parser.add_argument("--port", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    logs = options.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    store = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = training_deployment(options.port, store, one_hop=(MODEL,))
    running = Running(server, logs / "canary.log")
    picture = draw_set(1, seed=11)["circle"][0]
    runs: dict[str, list[dict[str, Any]]] = {window: [] for window in WINDOWS}
    try:
        wait_http(f"{server.url}/v2/health/ready")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            dataset = upload_shapes(http, per_class=40)
            stable, canary = train(http, dataset, seed=0), train(http, dataset, seed=1)
            one_hop = f"{server.url}/v1/models/{MODEL}:predict"
            urls = {
                "stable alone": one_hop,
                "canary 20%": one_hop,
                "two hops": f"{server.url}/v1/models/{MODEL}/versions/{stable}:predict",
            }

            def set_canary(percent: int | None) -> None:
                if percent is None:
                    if http.get(f"/v1/models/{MODEL}/rollout").json()["canary"] is not None:
                        http.post(f"/v1/models/{MODEL}/rollback").raise_for_status()
                else:
                    body = {"version": canary, "percent": percent}
                    http.post(f"/v1/models/{MODEL}/rollout", json=body).raise_for_status()

            # Warm every path: the stable version in the model's replica, both in StoreModels.
            set_canary(options.percent)
            for url in sorted(set(urls.values()) | {f"{server.url}/v1/models/{MODEL}/versions/{canary}:predict"}):
                warm = open_loop_by(url, picture, "image/png", options.rate, 3.0, _version)
                if warm["all"]["errors"]:
                    raise RuntimeError(f"{url}: {warm['all']['errors']} errors while warming up; see {running.log}")
            for repeat in range(options.repeats):  # interleaved: a slow spell hits every window
                for window in WINDOWS:
                    set_canary(options.percent if window == "canary 20%" else None)
                    run = open_loop_by(urls[window], picture, "image/png", options.rate, options.window_s, _version)
                    run["by"] = {("stable" if v == stable else "canary"): r for v, r in run["by"].items()}
                    runs[window].append(run)
                    shares = ", ".join(f"{v} {r['share']:.2f} p99 {r['p99_ms']:.1f} ms" for v, r in run["by"].items())
                    print(f"repeat {repeat} {window}: {shares}, errors {run['all']['errors']}")
    finally:
        running.stop()
    results = {
        "model": MODEL,
        "rate": options.rate,
        "window_s": options.window_s,
        "repeats": options.repeats,
        "percent": options.percent,
        "runs": runs,
    }
    publish(options.out, "canary", results, table(results))
    return 0


def table(results: dict[str, Any]) -> list[str]:
    """Each window's answers by version, medians over the repeats (docs/training.md includes it)."""
    lines = [
        f"A trained model's :predict at {results['rate']:g}/s open loop, {results['window_s']:g} s windows, "
        f"{results['repeats']} interleaved repeats (medians), canary at {results['percent']}%:",
        "",
        "| window | answered by | share | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for window, runs in results["runs"].items():
        for version in ("stable", "canary"):
            parts = [run["by"][version] for run in runs if version in run["by"]]
            if not parts:
                continue
            cells = [statistics.median(p[k] for p in parts) for k in ("share", "p50_ms", "p90_ms", "p99_ms")]
            errors = sum(run["all"]["errors"] for run in runs)
            lines.append(
                f"| {window} | {version} | {cells[0]:.2f} | {cells[1]:.1f} | {cells[2]:.1f} | {cells[3]:.1f} | {errors} |"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
