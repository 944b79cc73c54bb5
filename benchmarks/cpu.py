"""Where a server's CPU goes: CPU-ms per request by process under load, and % of a core at idle.

    python -m benchmarks.cpu load --model digits_cnn --servers vision-maas vision-maas-twohop litserve
    python -m benchmarks.cpu idle --variants ray-alone default RAY_SERVE_METRICS_EXPORT_INTERVAL_MS=1000

`load` starts each server as benchmarks/run.py does (same replicas and threads), sends a bounded
closed loop with `hey`, and divides every process's CPU time over the run by the answers: the
serving cost per request split by process (HAProxy, the model replicas, the catalogue's ingress,
Serve's controller, Ray's GCS, raylet and agents), repeated and interleaved, medians reported.
Within vision-maas' model replicas it is split again by thread (the forward, decoding, the event
loop that answers HTTP, Ray's native threads), named by `py-spy dump`.

`idle` starts the default seven-model deployment (deployments/serve_config.yaml, expanded as
`make serve` runs it) once per variant (environment settings of every Ray process), waits until
it is ready and has settled, then measures each process's CPU over a quiet window: what an idle
deployment costs, by process. The variant `ray-alone` starts Ray as `serve run` does and nothing
else (no Serve, no model): the floor under any deployment on Ray. Results go to
benchmarks/results/cpu.json and cpu.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from benchmarks.images import jpeg_images
from benchmarks.load import closed_loop
from benchmarks.servers import REPO, SERVERS, Running, Server, make_server, serve_command, write_config
from deployments.ray_env import ONE_MACHINE_ENV, THROUGHPUT_ENV, host_ports_of_its_own
from deployments.topology import CATALOGUE_DEPLOYMENTS, expand

RESULTS = REPO / "benchmarks" / "results"


def _deployment_of(cmdline: str) -> str | None:
    """The Serve deployment a replica's process runs (Ray names it after the actor); None for others."""
    if "ServeReplica:" not in cmdline:
        return None
    return cmdline.split("ServeReplica:", 1)[1].split()[0].rsplit(":", 1)[-1]


def process_group(proc: psutil.Process) -> str:
    """A stable name for what a process is (Ray names its workers after their actor)."""
    try:
        cmdline = " ".join(proc.cmdline())
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    deployment = _deployment_of(cmdline)
    if deployment is not None:
        return "replica: ingress" if deployment == "Ingress" else f"replica: {deployment}"
    for marker, group in (
        ("ServeController", "serve controller"),
        ("haproxy", "haproxy"),
        ("gcs_server", "ray gcs"),
        ("raylet", "ray raylet"),
        ("dashboard/agent.py", "ray dashboard agent"),
        ("dashboard.py", "ray dashboard"),
        ("runtime_env/agent", "ray runtime env agent"),
        ("log_monitor", "ray log monitor"),
        ("monitor.py", "ray monitor"),
        ("serve run", "serve run (driver)"),
        ("ray.init()", "serve run (driver)"),  # ray-alone's driver: serve run's role, nothing deployed
        ("ray::IDLE", "ray idle workers"),
    ):
        if marker in cmdline or marker in name:
            return group
    return name or "other"


def cpu_by_group(running: Running) -> dict[str, float]:
    """CPU seconds so far of each process group of the server's tree."""
    out: dict[str, float] = defaultdict(float)
    for proc in running.processes():
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[process_group(proc)] += times.user + times.system
    return dict(out)


# A pool's workers are one role: forward_0 -> forward, ThreadPoolExecutor-2_0 -> ThreadPoolExecutor.
_WORKER_NUMBER = re.compile(r"(?:[_-]\d+)+$")
NATIVE = "native (Ray's core worker, gRPC)"


def thread_role(name: str) -> str:
    """What a thread does, from its Python name: the numbers of a pool's workers dropped."""
    return _WORKER_NUMBER.sub("", name) or name


def py_spy() -> str | None:
    """The py-spy command: on PATH, or beside this Python (the project's dev dependency)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name of a live process, from `py-spy dump` (which needs
    ptrace on it); threads it does not list run no Python. Empty when py-spy is missing or cannot attach."""
    command = py_spy()
    if command is None:
        return {}
    try:
        dump = subprocess.run([command, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m[1]): m[2] for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', dump.stdout, re.M)}


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], float]:
    """CPU seconds so far of each thread of these processes, by (pid, native thread id)."""
    out: dict[tuple[int, int], float] = {}
    for pid in pids:
        try:
            threads = psutil.Process(pid).threads()
        except psutil.NoSuchProcess:
            continue
        out |= {(pid, t.id): t.user_time + t.system_time for t in threads}
    return out


def by_role(spent: dict[tuple[int, int], float], names: dict[int, dict[int, str]]) -> dict[str, float]:
    """Threads' CPU summed by role across processes; threads without a Python name are NATIVE."""
    out: dict[str, float] = defaultdict(float)
    for (pid, tid), seconds in spent.items():
        name = names.get(pid, {}).get(tid)
        out[NATIVE if name is None else thread_role(name)] += seconds
    return dict(out)


def model_replicas(running: Running) -> list[int]:
    """The pids of the server's model replicas (not the catalogue's deployments)."""
    pids = []
    for proc in running.processes():
        try:
            deployment = _deployment_of(" ".join(proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if deployment is not None and deployment not in CATALOGUE_DEPLOYMENTS:
            pids.append(proc.pid)
    return pids


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def measure_load(server: Server, log: Path, image: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    body, content_type = server.body(image)
    running = Running(server, log)
    try:
        running.wait_ready(image)
        closed_loop(server.url, body, content_type, concurrency, 3.0)  # warm
        replicas = model_replicas(running) if server.name.startswith("vision-maas") else []
        before, threads_before = cpu_by_group(running), thread_cpu(replicas)
        run = closed_loop(server.url, body, content_type, concurrency, seconds)
        spent = delta(cpu_by_group(running), before)
        threads_after = thread_cpu(replicas)
        names = {pid: thread_names(pid) for pid in replicas}
    finally:
        running.stop()
    threads_spent = {k: v - threads_before.get(k, 0.0) for k, v in threads_after.items()}
    answers = max(run["ok"], 1)
    return {
        "answers_per_s": run["ok"] / run["wall_s"],
        "cpu_ms_per_request": {k: v * 1000.0 / answers for k, v in spent.items() if v > 0},
        "replica_cpu_ms_per_request_by_thread": {
            k: v * 1000.0 / answers for k, v in by_role(threads_spent, names).items() if v > 0
        },
    }


def default_deployment(env: dict[str, str], port: int) -> Server:
    """The shipped default config (seven bundled models), expanded, on `port`."""
    config = yaml.safe_load((REPO / "deployments" / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    path = write_config(expand(config))
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    return Server("default", serve_command(path), url, "application/json", env=env)


def wait_http(url: str, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def _idle_percent(
    server: Server, log: Path, ready: Callable[[Running], None], settle_s: float, window_s: float
) -> tuple[dict[str, float], float]:
    """% of one core by process group of `server` over a quiet window once `ready` returned and
    `settle_s` passed, and the seconds from its start to ready."""
    launched = time.monotonic()
    running = Running(server, log)
    try:
        ready(running)
        ready_s = time.monotonic() - launched
        time.sleep(settle_s)
        before, started = cpu_by_group(running), time.monotonic()
        time.sleep(window_s)
        spent = delta(cpu_by_group(running), before)
        elapsed = time.monotonic() - started
    finally:
        running.stop()
    return {k: 100.0 * v / elapsed for k, v in spent.items() if v > 0}, ready_s


def measure_idle(
    env: dict[str, str], port: int, log: Path, settle_s: float, window_s: float
) -> tuple[dict[str, float], float]:
    """% of one core by process group over a quiet window of the ready default deployment, and the
    seconds from `serve run` to ready (what a slower control loop would cost)."""
    server = default_deployment(THROUGHPUT_ENV | ONE_MACHINE_ENV | host_ports_of_its_own() | env, port)
    return _idle_percent(server, log, lambda _: wait_http(server.url), settle_s, window_s)


RAY_ALONE = "ray-alone"
_RAY_ALONE_READY = "ray-alone ready"
# Ray as `serve run` starts it (ray.init on a fresh local node), then idle until stopped.
_RAY_ALONE_SCRIPT = f"import time, ray; ray.init(); print({_RAY_ALONE_READY!r}, flush=True); time.sleep(1e9)"


def measure_ray_alone(log: Path, settle_s: float, window_s: float) -> tuple[dict[str, float], float]:
    """As measure_idle, for a Ray node with nothing deployed: the floor under any deployment."""
    env = THROUGHPUT_ENV | ONE_MACHINE_ENV | host_ports_of_its_own()
    server = Server(RAY_ALONE, [sys.executable, "-c", _RAY_ALONE_SCRIPT], "", "", env=env)

    def ready(running: Running) -> None:
        deadline = time.monotonic() + 300.0
        while _RAY_ALONE_READY not in log.read_text(errors="replace"):
            if running.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray did not start; see {log}")
            time.sleep(0.5)

    return _idle_percent(server, log, ready, settle_s, window_s)


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for run in runs for k in run}
    return {k: statistics.median(run.get(k, 0.0) for run in runs) for k in sorted(keys)}


def table(title: str, unit: str, columns: dict[str, dict[str, float]], of: str = "process") -> list[str]:
    groups = sorted(
        {g for values in columns.values() for g in values}, key=lambda g: -max(c.get(g, 0) for c in columns.values())
    )
    lines = [
        f"### {title}",
        "",
        f"| {of} ({unit}) | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for group in groups:
        lines.append(f"| {group} | " + " | ".join(f"{c.get(group, 0.0):.2f}" for c in columns.values()) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(c.values()):.2f}**" for c in columns.values()) + " |")
    return [*lines, ""]


def _env(variant: str) -> dict[str, str]:
    """`default` -> nothing; `K=V,K2=V2` -> those variables."""
    return {} if variant == "default" else dict(kv.split("=", 1) for kv in variant.split(","))


def markdown(results: dict[str, Any]) -> list[str]:
    """cpu.md's lines from cpu.json's results."""
    lines = ["# Where the CPU goes", "", "Written by `python -m benchmarks.cpu` (medians of interleaved repeats).", ""]
    if "load" in results:
        load_results = results["load"]
        lines.append(
            f"{load_results['model']}, 224x224 JPEG, {load_results['concurrency']} clients, "
            f"{load_results['replicas']} replicas x {load_results['threads']} thread(s); answers/s: "
            + ", ".join(f"{n} {v:.0f}" for n, v in load_results["answers_per_s"].items())
        )
        lines.append("")
        lines += table("CPU-ms per request, by process", "CPU-ms", load_results["cpu_ms_per_request"])
        if load_results.get("replica_cpu_ms_per_request_by_thread"):
            lines += table(
                "The model replicas' CPU-ms per request, by thread",
                "CPU-ms",
                load_results["replica_cpu_ms_per_request_by_thread"],
                of="thread",
            )
    if "idle" in results:
        lines += table(
            "Idle default deployment (seven models), by process", "% of a core", results["idle"]["percent_of_a_core"]
        )
        ready_line = ", ".join(f"{v} {s:.1f}" for v, s in results["idle"]["ready_s"].items())
        lines += [f"Seconds from `serve run` to ready: {ready_line}", ""]
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    load = sub.add_parser("load")
    load.add_argument("--model", default="digits_cnn")
    load.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=["vision-maas", "vision-maas-twohop", "litserve"]
    )
    load.add_argument("--concurrency", type=int, default=8)
    load.add_argument("--seconds", type=float, default=10.0)
    load.add_argument("--repeats", type=int, default=2)
    load.add_argument("--replicas", type=int, default=2)
    load.add_argument("--threads", type=int, default=1)
    load.add_argument(
        "--variants", nargs="+", default=["default"], help="`default` or K=V[,K=V]: environment of vision-maas servers"
    )
    idle = sub.add_parser("idle")
    idle.add_argument(
        "--variants",
        nargs="+",
        default=[RAY_ALONE, "default"],
        help=f"`{RAY_ALONE}` (Ray, nothing deployed), `default` or K=V[,K=V] environment settings",
    )
    idle.add_argument("--repeats", type=int, default=2)
    idle.add_argument("--settle-s", type=float, default=20.0)
    idle.add_argument("--window-s", type=float, default=30.0)
    for each in (load, idle):
        each.add_argument("--port", type=int, default=8190)
        each.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    logs = options.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = options.out / "cpu.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if options.what == "load":
        image = jpeg_images("224x224")[0]
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        cases = [
            (n, v) for n in options.servers for v in (options.variants if n.startswith("vision-maas") else ["default"])
        ]
        for repeat in range(options.repeats):  # interleaved: a slow spell hits every server
            for name, variant in cases:
                server = make_server(name, options.model, options.port, options.threads, 16, replicas=options.replicas)
                server.env |= _env(variant)
                label = name if variant == "default" else f"{name} {variant}"
                log = logs / f"cpu-{name}-{repeat}.log"
                run = measure_load(server, log, image, options.concurrency, options.seconds)
                total = sum(run["cpu_ms_per_request"].values())
                print(f"{label} repeat {repeat}: {run['answers_per_s']:.1f}/s, {total:.2f} CPU-ms/request")
                runs[label].append(run)
        results["load"] = {
            "model": options.model,
            "concurrency": options.concurrency,
            "replicas": options.replicas,
            "threads": options.threads,
            "answers_per_s": {n: statistics.median(r["answers_per_s"] for r in rs) for n, rs in runs.items()},
            "cpu_ms_per_request": {n: medians([r["cpu_ms_per_request"] for r in rs]) for n, rs in runs.items()},
            "replica_cpu_ms_per_request_by_thread": {
                n: medians([r["replica_cpu_ms_per_request_by_thread"] for r in rs])
                for n, rs in runs.items()
                if n.startswith("vision-maas")
            },
        }
    else:
        variants: dict[str, list[dict[str, float]]] = defaultdict(list)
        ready: dict[str, list[float]] = defaultdict(list)
        for repeat in range(options.repeats):
            for variant in options.variants:
                log = logs / f"idle-{repeat}.log"
                if variant == RAY_ALONE:
                    run, ready_s = measure_ray_alone(log, options.settle_s, options.window_s)
                else:
                    run, ready_s = measure_idle(_env(variant), options.port, log, options.settle_s, options.window_s)
                print(f"idle {variant} repeat {repeat}: {sum(run.values()):.1f}% of a core, ready in {ready_s:.1f} s")
                variants[variant].append(run)
                ready[variant].append(ready_s)
        results["idle"] = {
            "percent_of_a_core": {v: medians(rs) for v, rs in variants.items()},
            "ready_s": {v: statistics.median(r) for v, r in ready.items()},
        }
    path.write_text(json.dumps(results, indent=2) + "\n")
    lines = markdown(results)
    (options.out / "cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
