"""The serving image's own command (`docker run vision-maas`): the default config, one machine.

    python -m deployments.container [CONFIG]

Expands CONFIG (the packaged default when omitted) as `make serve` does, binds Serve's HTTP front
door to every interface of the container, and replaces itself with `serve run`, so that the
image's init (dumb-init) delivers the stop signal to it: Ctrl-C's graceful path, seconds long with
`ONE_MACHINE_ENV` (one container is one machine). Everything it and Ray write goes under /tmp
(HOME included, where Ray keeps its token), so the root filesystem may be read-only. KubeRay does
not run this: it sets its own command in each pod.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from deployments.ray_env import ONE_MACHINE_ENV
from deployments.topology import expand

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
WRITABLE = Path("/tmp")


def serve_config(config: Path, host: str = "0.0.0.0") -> dict[str, object]:
    """CONFIG expanded into one application per model, its HTTP front door bound to `host`."""
    expanded = expand(yaml.safe_load(config.read_text()))
    expanded["http_options"] = {**(expanded.get("http_options") or {}), "host": host}
    return expanded


def main(argv: list[str]) -> None:
    config = Path(argv[0]) if argv else DEFAULT_CONFIG
    path = WRITABLE / "serve_config.yaml"
    path.write_text(yaml.safe_dump(serve_config(config), sort_keys=False))
    env = os.environ | ONE_MACHINE_ENV | {"HOME": str(WRITABLE)}
    serve = str(Path(sys.executable).with_name("serve"))
    os.execve(serve, [serve, "run", str(path)], env)


if __name__ == "__main__":
    main(sys.argv[1:])
