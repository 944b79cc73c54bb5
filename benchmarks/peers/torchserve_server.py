"""TorchServe with its dynamic batching: a custom handler around the shared pipeline, raw JPEG bodies.

python -m benchmarks.peers.torchserve_server --model resnet18 --port 8103 --workers 2 --threads 1 --max-batch-size 16 --batch-timeout 0.005

POST the image to http://127.0.0.1:PORT/predictions/MODEL with Content-Type image/jpeg.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

import psutil
import yaml

from benchmarks.pipeline import MODELS
from benchmarks.servers import free_ports

HANDLER = Path(__file__).with_name("torchserve_handler.py")
VERSION = "1.0"


def archive(model: str, threads: int, store: Path) -> Path:
    """`model`.mar in `store`: the handler only (the pipeline builds the model), and its settings."""
    # The handler reads these from context.model_yaml_config; no serialized model file is needed.
    # (TorchServe warns that it lacks minWorkers/maxWorkers: config.properties' `models` sets them.)
    config = store.parent / "model-config.yaml"
    config.write_text(yaml.safe_dump({"handler": {"model": model, "threads": threads}}))
    archiver = str(Path(sys.executable).with_name("torch-model-archiver"))
    command = [archiver, "--model-name", model, "--version", VERSION, "--handler", str(HANDLER)]
    command += ["--config-file", str(config), "--export-path", str(store), "--force"]
    subprocess.run(command, check=True)
    return store / f"{model}.mar"


def ts_config(model: str, mar: Path, port: int, workers: int, max_batch_size: int, batch_timeout: float) -> str:
    """config.properties: every listener on 127.0.0.1, the model registered with its workers and batching."""
    management, metrics, grpc_inference, grpc_management = free_ports(4)
    registration = {
        model: {
            VERSION: {
                "defaultVersion": True,
                "marName": mar.name,
                "minWorkers": workers,
                "maxWorkers": workers,
                "batchSize": max_batch_size,
                "maxBatchDelay": round(batch_timeout * 1000),  # milliseconds
                "responseTimeout": 120,
            }
        }
    }
    settings = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        # gRPC cannot be turned off: its default ports (7070, 7071) would clash with another TorchServe.
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": str(grpc_management),
        "disable_token_authorization": "true",
        "enable_envvars_config": "false",
        # The workers must run this venv's Python: the handler imports `benchmarks` from it.
        "python": sys.executable,
        "model_store": str(mar.parent),
        "default_workers_per_model": str(workers),
        "default_response_timeout": "120",
        # As many queued requests as vision-maas' replicas accept (max_queued_requests).
        "job_queue_size": "1024",
        # A 2-core machine: the model workers get the cores, not Netty.
        "number_of_netty_threads": "2",
        "netty_client_threads": "2",
        "vmargs": "-Xmx512m -XX:+ExitOnOutOfMemoryError",
        "models": json.dumps(registration),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def torchserve_processes(launcher: int, work: Path) -> list[psutil.Process]:
    """The launcher's tree, and Java and its workers by `work` in their command line (orphaned if it died first)."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(launcher)
        found = {proc.pid: proc for proc in [root, *root.children(recursive=True)]}
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(str(work) in part for part in proc.info["cmdline"] or []):
            found.setdefault(proc.pid, proc)
    return list(found.values())


def stop(launcher: subprocess.Popen[bytes], work: Path, grace_s: float = 15.0) -> None:
    """SIGTERM Java (its shutdown hook stops the Python workers), then SIGKILL whatever is left."""
    procs = torchserve_processes(launcher.pid, work)
    java = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.name() == "java":
                proc.terminate()
                java.append(proc)
    psutil.wait_procs(java, timeout=grace_s)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        launcher.wait(timeout=5)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT or SIGTERM: end the wait on TorchServe and stop it."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="resnet18")
    parser.add_argument("--port", type=int, default=8103)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=1, help="Python worker processes")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds (TorchServe rounds to ms)")
    args = parser.parse_args()

    # Model store, config, logs, extracted archive and worker sockets: all in one temp dir, removed on exit.
    work = Path(tempfile.mkdtemp(prefix="torchserve-"))
    store = work / "model-store"
    store.mkdir()
    mar = archive(args.model, args.threads, store)
    config = work / "config.properties"
    config.write_text(ts_config(args.model, mar, args.port, args.workers, args.max_batch_size, args.batch_timeout))
    # LOG_LOCATION/METRICS_LOCATION: TorchServe's log4j2 files; TEMP: Java's tmpdir (extracted .mar,
    # worker sockets); TMPDIR: the launcher's pid file, else one /tmp/.model_server.pid for all TorchServes.
    logs = work / "logs"
    env = {
        **os.environ,
        "LOG_LOCATION": str(logs),
        "METRICS_LOCATION": str(logs),
        "TEMP": str(work),
        "TMPDIR": str(work),
    }
    command = [str(Path(sys.executable).with_name("torchserve")), "--start", "--foreground", "--ncs"]
    command += ["--model-store", str(store), "--ts-config", str(config), "--models", f"{args.model}={mar.name}"]
    print(f"TorchServe in {work}: {' '.join(command)}", flush=True)

    # SIGINT too: a shell starts background jobs with it ignored, and then the default handler is never set.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    launcher = subprocess.Popen(command, cwd=work, env=env)
    code = 0
    try:
        code = launcher.wait()
    except KeyboardInterrupt:
        pass
    finally:
        # Ignore a second signal while stopping (the suite SIGINTs the whole group, then SIGKILLs it).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(launcher, work)
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
