"""The chart's head and worker pod templates run as podman containers, as KubeRay would start them.

KubeRay (the operator this tier does not have) turns each group's `rayStartParams` and container
resources into the container's command, and its `authOptions` and `gcsFaultToleranceOptions` into
environment; `ray_start` and `kuberay_env` do the same, after KubeRay v1.7's pod builder
(ray-operator/controllers/ray/common/pod.go). Everything else comes from the rendered template:
image, env, the pod's and the container's securityContext, resources and volumes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tests.container import image as img

# The ports KubeRay fixes for every Ray node (its defaults; the chart's probes call the agent's).
GCS_PORT = 6379
DASHBOARD_PORT = 8265
AGENT_PORT = 52365
METRICS_PORT = 8080

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in cores."""
    match = _CPU.match(str(quantity))
    assert match, quantity
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("4Gi") in bytes."""
    match = _MEMORY.match(str(quantity))
    assert match, quantity
    return int(match.group(1)) * _UNITS[match.group(2)]


def ray_start(
    group: dict[str, Any], head: bool, head_address: str | None = None, extra: dict[str, str] | None = None
) -> str:
    """The `ray start` line KubeRay runs in a group's Ray container; `extra` holds the parameters
    KubeRay adds itself (`redis-password: $REDIS_PASSWORD`, expanded by the container's shell)."""
    container = group["template"]["spec"]["containers"][0]
    limits = container.get("resources", {}).get("limits", {})
    params: dict[str, str] = {k: str(v) for k, v in (group.get("rayStartParams") or {}).items()} | (extra or {})
    params.setdefault("num-cpus", f"{cpus(limits['cpu']):g}")  # KubeRay: from the CPU limit
    params.setdefault("memory", str(memory_bytes(limits["memory"])))
    params.setdefault("metrics-export-port", str(METRICS_PORT))
    params.setdefault("dashboard-agent-listen-port", str(AGENT_PORT))
    if head:
        params.setdefault("port", str(GCS_PORT))
    else:
        assert head_address is not None
        params["address"] = head_address
    flags = " ".join(f"--{k}={v}" for k, v in sorted(params.items()))  # unquoted, as KubeRay writes them
    return f"ray start {'--head ' if head else ''}{flags} --block"


def run(name: str, network: str, options: list[str], image: str, start: str) -> None:
    """Start a Ray container with KubeRay's command and args around `ray start`: a login shell that
    raises the open-files limit (refused under this tier's fixed ulimits; the `;` goes on). A pod's
    `command` replaces the image's ENTRYPOINT and its `args` the CMD."""
    command = ["/bin/bash", "-lc", "--"]
    img.podman(
        "run",
        "--detach",
        "--name",
        name,
        "--hostname",
        name,
        "--network",
        network,
        *options,
        "--entrypoint",
        json.dumps(command),
        image,
        f"ulimit -n 65536; {start}",
    )


def run_args(
    template: dict[str, Any], env: dict[str, str], secrets: dict[tuple[str, str], str], volumes: Path
) -> list[str]:
    """`podman run` options for a pod template's Ray container: env, security, resources, volumes.

    An emptyDir is a directory under `volumes`: like the pod's, it outlives a restart of the
    container, and belongs to the pod's user and fsGroup."""
    spec = template["spec"]
    (container,) = spec["containers"]
    pod_security = spec.get("securityContext", {})
    security = container.get("securityContext", {})
    args: list[str] = [*img.ULIMITS, *img.HOST_LIMITS_ENV]
    if "runAsUser" in pod_security:
        args += ["--user", f"{pod_security['runAsUser']}:{pod_security.get('runAsGroup', 0)}"]
    if "fsGroup" in pod_security:
        args += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    if security.get("privileged"):
        args.append("--privileged")
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        args += ["--cpus", f"{cpus(limits['cpu']):g}"]
    if "memory" in limits:
        args += ["--memory", str(memory_bytes(limits["memory"]))]
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in empty_dirs, f"only emptyDir volumes run here: {mount}"
        directory = volumes / mount["name"]
        directory.mkdir(parents=True)
        os.chown(directory, pod_security.get("runAsUser", 0), pod_security.get("fsGroup", 0))
        directory.chmod(0o2775)
        args += ["--mount", f"type=bind,source={directory},destination={mount['mountPath']}"]
    for item in container.get("env", []):
        if "value" in item:
            value = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            value = secrets[(ref["name"], ref["key"])]
        args += ["--env", f"{item['name']}={value}"]
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    assert container["image"].split(":")[0].endswith("vision-maas"), container["image"]
    return args


def probe(name: str, container: dict[str, Any], kind: str) -> bool:
    """Run the container's `kind` probe (readinessProbe, livenessProbe) as the kubelet would."""
    command = container[kind]["exec"]["command"]
    return img.podman("exec", name, *command, check=False, timeout=30).returncode == 0
