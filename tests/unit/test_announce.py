"""`make serve` announces the URL it listens on, read from the Serve config."""

from __future__ import annotations

from pathlib import Path

from deployments.announce import listen_url


def test_listen_url_is_read_from_http_options(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("http_options:\n  host: 0.0.0.0\n  port: 9001\napplications: []\n")
    assert listen_url(config) == "http://0.0.0.0:9001"


def test_listen_url_defaults_to_serve_defaults_when_absent(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("applications: []\n")
    assert listen_url(config) == "http://127.0.0.1:8000"
