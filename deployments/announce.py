"""`make serve`: run `serve run`, say where it listens once ready, and say why while it is not.

    python -m deployments.announce deployments/serve_config.yaml -- serve run deployments/serve_config.yaml

The command after `--` runs as a child with this console. Until the app answers on
`/v2/health/ready`, the Ray cluster that the child started is read through its dashboard (the
Serve REST API and the cluster's resource usage, as `serve status` and `ray status` show them):
replicas that cannot be scheduled, with their demand against the cluster's CPUs, and deployments
that are not healthy are printed on stderr, each time the explanation changes. When the
application fails for good, the child is stopped and the exit status is 1; otherwise it is the
child's own (Ctrl-C reaches both: `serve run` shuts Serve and Ray down, this waits for it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

# Replicas that fit the free CPUs may still wait a few seconds for a worker process; one that
# does not fit is reported after this grace, well within 30 s of a first run on 2 cores.
GRACE_S = 3.0
# Serve retries unhealthy replicas; an application still UNHEALTHY after this never started.
UNHEALTHY_GIVE_UP_S = 120.0
POLL_S = 1.0
NO_DASHBOARD_NOTE_S = 20.0
READY_TIMEOUT_S = 900.0
# How long `serve run` gets to shut Serve and Ray down (Serve alone may wait 30 s for its controller)
# before it is terminated, then killed.
STOP_GRACE_S = 60.0
# The longest error text printed (a failed deployment's message carries a whole traceback).
ERROR_LINES = 15


def listen_url(config_path: Path) -> str:
    """http://host:port of a Serve config's http_options (Serve's defaults when absent)."""
    http = yaml.safe_load(config_path.read_text()).get("http_options") or {}
    return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"


def ray_auth_headers(environ: Mapping[str, str], home: Path) -> dict[str, str]:
    """Ray's token for its dashboard, looked up in Ray's documented order (none: no header)."""
    if environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return {}
    token = environ.get("RAY_AUTH_TOKEN", "")
    if not token:
        path = (
            Path(environ["RAY_AUTH_TOKEN_PATH"]) if environ.get("RAY_AUTH_TOKEN_PATH") else home / ".ray" / "auth_token"
        )
        try:
            token = path.read_text().strip()
        except OSError:
            return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class Problem:
    """One reason the application is not ready; `key` identifies it across polls."""

    key: str
    text: str
    # Shown at once rather than after GRACE_S: it cannot resolve by waiting.
    certain: bool = False
    # The application failed for good: stop `serve run` and exit non-zero.
    fatal: bool = False


def _number(value: float) -> str:
    return f"{value:g}" if value != int(value) else f"{value:.1f}"


def _resources(demand: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{name}: {_number(value)}" for name, value in sorted(demand.items())) + "}"


def _tail(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) > ERROR_LINES:
        lines = [lines[0], "...", *lines[-(ERROR_LINES - 2) :]]
    return "\n    ".join(lines)


@dataclass(frozen=True)
class Cluster:
    """The cluster's resources as `ray status` reports them: resource -> (used, total), and the
    resource shapes that wait for a node, with how many of each."""

    usage: dict[str, tuple[float, float]]
    pending: list[tuple[dict[str, float], int]]


def cluster_state(cluster_status: Mapping[str, Any]) -> Cluster:
    """Parse the dashboard's GET /api/cluster_status (its keys camelCased); empty when it has none."""
    report = ((cluster_status.get("data") or {}).get("clusterStatus") or {}).get("loadMetricsReport") or {}
    usage = {name: (float(pair[0]), float(pair[1])) for name, pair in (report.get("usage") or {}).items()}
    pending = [
        ({r: float(v) for r, v in shape.items()}, int(count)) for shape, count in report.get("resourceDemand") or []
    ]
    return Cluster(usage, pending)


def _dashboard_key(name: str) -> str:
    """A resource name as the dashboard's JSON spells it (snake_case keys become camelCase)."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _same_shape(demand: Mapping[str, float], shape: Mapping[str, float]) -> bool:
    keyed = {_dashboard_key(r): v for r, v in demand.items() if v}
    return keyed.keys() == {r for r, v in shape.items() if v} and all(abs(keyed[r] - shape[r]) < 1e-6 for r in keyed)


def _against(demand: Mapping[str, float], usage: Mapping[str, tuple[float, float]]) -> tuple[str, bool]:
    """ "cluster has CPU 2.0, 0.2 free" for the resources in `demand`; whether it can never fit."""
    parts, never = [], False
    for resource in sorted(demand):
        used, total = usage.get(_dashboard_key(resource), (0.0, 0.0))
        parts.append(
            f"{resource} {_number(total)}, {_number(max(0.0, total - used))} free" if total else f"no {resource}"
        )
        never = never or demand[resource] > total + 1e-9
    return "cluster has " + "; ".join(parts) + (
        " (never enough: more than the whole cluster has)" if never else ""
    ), never


def _replicas(count: int) -> str:
    return f"{count} replica{'' if count == 1 else 's'}"


def _scheduling(app_name: str, app: Mapping[str, Any], cluster: Cluster) -> list[Problem]:
    """What the application's replicas ask of the cluster that it cannot give."""
    found: list[Problem] = []
    deployments: Mapping[str, Any] = app.get("deployments") or {}
    asked: dict[str, float] = {}
    replicas = 0
    for deployment in deployments.values():
        count = int(deployment.get("target_num_replicas") or 0)
        replicas += count
        for resource, need in (deployment.get("required_resources") or {}).items():
            asked[resource] = asked.get(resource, 0.0) + float(need) * count
    over = {r: need for r, need in asked.items() if need > cluster.usage.get(_dashboard_key(r), (0.0, 0.0))[1] + 1e-9}
    if over:
        totals = {r: cluster.usage.get(_dashboard_key(r), (0.0, 0.0))[1] for r in over}
        text = (
            f"{app_name}: its {_replicas(replicas)} ask for {_resources(over)} in all; the cluster has "
            f"{_resources(totals)}: lower ray_actor_options.num_cpus or num_replicas in the config"
        )
        found.append(Problem(f"{app_name}:over", text, certain=True))
    # Replicas not yet on a node either wait for resources or for their worker process to start;
    # one larger than the whole cluster waits for ever, and the cluster's pending demand says how
    # many of the others wait for resources, of each shape.
    unplaced = {
        name: sum(1 for r in d.get("replicas") or [] if r.get("state") == "STARTING" and not r.get("node_id"))
        for name, d in deployments.items()
    }
    for name, count in list(unplaced.items()):
        demand = deployments[name].get("required_resources") or {}
        have, never = _against(demand, cluster.usage)
        if count and never:
            found.append(
                Problem(f"{name}:waiting", f"{name}: {_replicas(count)} waiting for {_resources(demand)}; {have}", True)
            )
            del unplaced[name]
    for shape, waiting in cluster.pending:
        candidates = {
            name: count
            for name, count in unplaced.items()
            if count and _same_shape(deployments[name].get("required_resources") or {}, shape)
        }
        if not candidates:
            continue
        demand = next(d.get("required_resources") for n, d in deployments.items() if n in candidates)
        have, never = _against(demand, cluster.usage)
        if sum(candidates.values()) <= waiting:
            for name, count in candidates.items():
                text = f"{name}: {_replicas(count)} waiting for {_resources(demand)}; {have}"
                found.append(Problem(f"{name}:waiting", text, certain=never))
        else:
            among = ", ".join(candidates)
            text = (
                f"{_replicas(waiting)} waiting for {_resources(demand)}, among those of {among} not started yet; {have}"
            )
            found.append(Problem(f"{among}:waiting", text, certain=never))
    return found


def problems(details: Mapping[str, Any], cluster: Cluster) -> list[Problem]:
    """Why the applications of a Serve REST API payload (GET /api/serve/applications/) are not running."""
    found: list[Problem] = []
    for app_name, app in (details.get("applications") or {}).items():
        status = app.get("status", "")
        if status == "DEPLOY_FAILED":
            text = f"{app_name}: {status}: {_tail(app.get('message', ''))}"
            found.append(Problem(f"{app_name}:{status}", text, certain=True, fatal=True))
        if status == "RUNNING":
            continue
        scheduling = _scheduling(app_name, app, cluster) if cluster.usage else []
        found.extend(scheduling)
        explained = " ".join(p.key for p in scheduling)
        for name, deployment in (app.get("deployments") or {}).items():
            dep_status = deployment.get("status", "")
            # Serve's own "taken more than 30s to be scheduled" says less than the line above.
            if dep_status != "HEALTHY" and deployment.get("message") and name not in explained:
                text = f"{name}: {dep_status}: {_tail(deployment['message'])}"
                found.append(Problem(f"{name}:{dep_status}", text, certain=dep_status == "DEPLOY_FAILED"))
    return found


class Watcher:
    """Turns successive payloads into what to print: problems past their grace, once per change."""

    def __init__(self) -> None:
        self._first_seen: dict[str, float] = {}
        self._unhealthy_since: float | None = None
        self._printed = ""

    def observe(self, details: Mapping[str, Any], cluster: Cluster, now: float) -> tuple[str | None, bool]:
        """(text to print now or None, whether the application failed for good)."""
        found = problems(details, cluster)
        self._first_seen = {p.key: self._first_seen.get(p.key, now) for p in found}
        shown = [p for p in found if p.certain or now - self._first_seen[p.key] >= GRACE_S]
        fatal = any(p.fatal for p in shown)
        unhealthy = any(app.get("status") == "UNHEALTHY" for app in (details.get("applications") or {}).values())
        if not unhealthy:
            self._unhealthy_since = None
        elif self._unhealthy_since is None:
            self._unhealthy_since = now
        if self._unhealthy_since is not None and now - self._unhealthy_since >= UNHEALTHY_GIVE_UP_S:
            fatal = True
            shown.append(Problem("unhealthy", f"still UNHEALTHY after {UNHEALTHY_GIVE_UP_S:.0f} s"))
        if not shown:
            return None, False
        head = "vision-maas failed:" if fatal else "vision-maas is not ready yet:"
        text = "\n".join([head, *(f"  {p.text}" for p in shown)])
        if text == self._printed:
            return None, fatal
        self._printed = text
        return text, fatal


def _listening_ports(proc: psutil.Process, host: str) -> list[int]:
    # psutil 6 renamed connections() to net_connections(); Ray vendors a newer one than ours.
    connections = getattr(proc, "net_connections", None) or proc.connections
    return [c.laddr.port for c in connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.ip == host]


def find_dashboard(pid: int) -> str | None:
    """URL of the Ray dashboard that process `pid` started (`serve run` starts a local Ray), if up."""
    try:
        children: Iterator[psutil.Process] = iter(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return None
    for child in children:
        try:
            args = child.cmdline()
            if not any(a.endswith(os.path.join("dashboard", "dashboard.py")) for a in args):
                continue
            host = next((a.split("=", 1)[1] for a in args if a.startswith("--host=")), "127.0.0.1")
            ports = _listening_ports(child, "0.0.0.0" if host in ("", "0.0.0.0") else host)
        except psutil.Error:
            continue
        if ports:
            return f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{min(ports)}"
    return None


def _get_json(url: str, headers: Mapping[str, str]) -> Any:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers)), timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(child: subprocess.Popen[bytes], signals: tuple[signal.Signals, ...]) -> int:
    """Send each of `signals` in turn, STOP_GRACE_S apart, until `serve run` has exited; its status."""
    for sig in signals:
        if child.poll() is not None:
            break
        child.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(STOP_GRACE_S)
    return child.wait()


# As Ctrl-C does (serve run shuts Serve down, then Ray); SIGTERM still runs Ray's shutdown, SIGKILL does not.
GRACEFUL = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def _wait_out(child: subprocess.Popen[bytes]) -> int:
    """After Ctrl-C (the child got it too): let `serve run` finish shutting down, then its status.

    A second SIGINT would interrupt Ray's own shutdown half way, so a hung child is terminated instead.
    """
    try:
        return child.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        return _stop(child, GRACEFUL[1:])


def supervise(config: Path, command: list[str]) -> int:
    """Run `command`; announce readiness, explain delays and failures; the exit status of `make serve`."""
    url = listen_url(config)
    headers = ray_auth_headers(os.environ, Path.home())
    child = subprocess.Popen(command)
    # SIGTERM (make or a test stopping us) stops the child as gracefully as Ctrl-C would.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(_stop(child, GRACEFUL) or 143))
    watcher = Watcher()
    dashboard: str | None = None
    started = time.monotonic()
    deadline = started + READY_TIMEOUT_S
    noted = False
    try:
        while child.poll() is None:
            if _ready(url):
                print(f"\nvision-maas is ready at {url}/ (API docs: {url}/docs; Ctrl-C stops it)\n", flush=True)
                return child.wait()
            if time.monotonic() > deadline:
                print(
                    f"vision-maas did not become ready at {url} within {READY_TIMEOUT_S / 60:.0f} minutes",
                    file=sys.stderr,
                )
                return _stop(child, GRACEFUL) or 1
            dashboard = dashboard or find_dashboard(child.pid)
            if dashboard is None and not noted and time.monotonic() - started > NO_DASHBOARD_NOTE_S:
                # `serve run` joined a running cluster (RAY_ADDRESS, `ray start`) or Ray has no dashboard.
                print(
                    f"waiting for {url}/v2/health/ready (no Ray dashboard of this `serve run` to ask why)",
                    file=sys.stderr,
                )
                noted = True
            if dashboard:
                details = _get_json(f"{dashboard}/api/serve/applications/", headers)
                status = _get_json(f"{dashboard}/api/cluster_status", headers) or {}
                if isinstance(details, dict):
                    text, fatal = watcher.observe(details, cluster_state(status), time.monotonic())
                    if text:
                        print(text, file=sys.stderr, flush=True)
                    if fatal:
                        print("stopping serve run", file=sys.stderr, flush=True)
                        _stop(child, GRACEFUL)
                        return 1
            time.sleep(POLL_S)
        return child.wait()
    except KeyboardInterrupt:
        return _wait_out(child)


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 2 or len(argv) < 4:
        print("usage: python -m deployments.announce CONFIG -- COMMAND...", file=sys.stderr)
        return 2
    return supervise(Path(argv[1]), argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
