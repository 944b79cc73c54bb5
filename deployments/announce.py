"""Print where the server listens once every model is ready (used by `make serve`)."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml


def listen_url(config_path: Path) -> str:
    """http://host:port of a Serve config's http_options (Serve's defaults when absent)."""
    http = yaml.safe_load(config_path.read_text()).get("http_options") or {}
    return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"


def main(argv: list[str]) -> int:
    url = listen_url(Path(argv[1]))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    print(f"\nvision-maas is ready at {url}/ (API docs: {url}/docs; Ctrl-C stops it)\n", flush=True)
                    return 0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    print(f"vision-maas did not become ready at {url} within 15 minutes", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
