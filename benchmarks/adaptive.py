"""SLO-aware adaptive batching against fixed batch sizes, at the same p99 target and load.

    python -m benchmarks.adaptive --model resnet18 --size 640x480 --target-p99-ms 600

One server holds the model several times (one deployment per setting, each using every core
while it is measured), so the settings are measured interleaved under identical conditions:
fixed caps, and the adaptive controller (deployments/batching.py) with the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import psutil

from benchmarks.images import SIZES, jpeg_images
from benchmarks.load import closed_loop, open_loop
from benchmarks.pipeline import MODELS
from benchmarks.servers import Running, Server, serve_command, vision_maas_config, write_config

RESULTS = Path(__file__).resolve().parent / "results"


def settings(model: str, fixed: list[int], target_ms: float, wait_s: float, cap: int) -> dict[str, dict[str, Any]]:
    """Served name -> user_config for every fixed cap (not measured: the cap is n) and the adaptive
    controller (under the replica's measured cap)."""
    out: dict[str, dict[str, Any]] = {
        f"{model}_b{n}": {"max_batch_size": n, "batch_wait_timeout_s": wait_s, "measure": False} for n in fixed
    }
    out[f"{model}_adaptive"] = {"max_batch_size": cap, "batch_wait_timeout_s": wait_s, "target_p99_ms": target_ms}
    return out


def summarise(rows: list[dict[str, Any]], target_ms: float) -> list[dict[str, Any]]:
    """Medians per (setting, load step) over repeats, with whether p99 met the target."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["load"]), []).append(row)
    out = []
    for (setting, load), group in groups.items():
        merged: dict[str, Any] = {"setting": setting, "load": load, "repeats": len(group)}
        for field in ("throughput", "p50_ms", "p99_ms", "errors"):
            merged[field] = statistics.median(float(r[field]) for r in group)
        merged["meets_target"] = merged["p99_ms"] <= target_ms and merged["errors"] == 0
        out.append(merged)
    return out


def markdown(summary: list[dict[str, Any]], target_ms: float) -> str:
    """The table, and per load step the best fixed setting that met the target next to adaptive."""
    lines = [
        f"| setting | load | images/s | p50 ms | p99 ms | meets p99 <= {target_ms:g} ms |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in sorted(summary, key=lambda r: (r["load"], r["setting"])):
        lines.append(
            f"| {r['setting']} | {r['load']} | {r['throughput']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {'yes' if r['meets_target'] else 'no'} |"
        )
    lines += ["", "| load | best fixed meeting the target | its images/s | adaptive images/s | adaptive p99 ms |"]
    lines.append("|---|---|---:|---:|---:|")
    for load in sorted({r["load"] for r in summary}):
        step = [r for r in summary if r["load"] == load]
        adaptive = next(r for r in step if r["setting"].endswith("_adaptive"))
        fixed = [r for r in step if not r["setting"].endswith("_adaptive") and r["meets_target"]]
        best = max(fixed, key=lambda r: (r["throughput"], -r["p99_ms"]), default=None)
        lines.append(
            f"| {load} | {best['setting'] if best else 'none'} | {best['throughput'] if best else 0:.1f} "
            f"| {adaptive['throughput']:.1f} | {adaptive['p99_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="resnet18")
    parser.add_argument("--size", choices=sorted(SIZES), default="640x480")
    parser.add_argument("--target-p99-ms", type=float, default=600.0)
    parser.add_argument("--fixed", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.6, 0.9], help="fractions of b16's saturation")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop step (0: none)")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    threads = psutil.cpu_count(logical=True) or 1
    batching = settings(args.model, args.fixed, args.target_p99_ms, args.batch_wait_s, args.max_batch_size)
    share = round(0.9 * threads / len(batching), 3)
    config = write_config(vision_maas_config(args.model, args.port, batching, share, threads))
    base = f"http://127.0.0.1:{args.port}/v1/models"
    image = jpeg_images(args.size)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    server = Server(
        "vision-maas", serve_command(config), f"{base}/{args.model}_b{max(args.fixed)}:predict", "image/jpeg"
    )
    (args.out / "logs").mkdir(exist_ok=True)
    running = Running(server, args.out / "logs" / "adaptive.log")
    rows: list[dict[str, Any]] = []
    try:
        running.wait_ready(image)
        for name in batching:  # every replica answers (and is warm) before anything is timed
            closed_loop(f"{base}/{name}:predict", image, "image/jpeg", 4, 3.0)
        saturation = closed_loop(server.url, image, "image/jpeg", 32, args.seconds)["throughput"]
        print(f"saturation of {args.model}_b{max(args.fixed)}: {saturation:.1f} images/s", flush=True)
        names = list(batching)
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                url = f"{base}/{name}:predict"
                for fraction in args.rates:
                    row = open_loop(url, image, "image/jpeg", saturation * fraction, args.seconds)
                    rows.append(row | {"setting": name, "load": f"open {fraction:g}x"})
                if args.concurrency:
                    row = closed_loop(url, image, "image/jpeg", args.concurrency, args.seconds)
                    rows.append(row | {"setting": name, "load": f"closed c={args.concurrency}"})
                mine = [round(r["p99_ms"]) for r in rows if r["setting"] == name][-(len(args.rates) + 1) :]
                print(f"{name} repeat {repeat}: p99 ms {mine}", flush=True)
    finally:
        running.stop()
    summary = summarise(rows, args.target_p99_ms)
    text = markdown(summary, args.target_p99_ms)
    settings_used = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"settings": settings_used, "saturation": saturation, "summary": summary}
    (args.out / "adaptive.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "adaptive.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
