"""The serving image's own command: what `serve run` gets, checked without starting it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments import container
from deployments.ray_env import ONE_MACHINE_ENV
from deployments.topology import expand


def test_image_command_serves_the_default_config_expanded_on_every_interface() -> None:
    config = container.serve_config(container.DEFAULT_CONFIG)
    authored = yaml.safe_load(container.DEFAULT_CONFIG.read_text())
    assert config["http_options"] == authored["http_options"] | {"host": "0.0.0.0"}
    assert config["applications"] == expand(authored)["applications"]


def test_image_command_execs_serve_run_with_one_machine_env_and_home_under_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(container, "WRITABLE", tmp_path)
    monkeypatch.setattr(container.os, "execve", lambda path, args, env: calls.append((path, args, env)))
    container.main([])
    ((path, args, env),) = calls
    assert Path(path).name == "serve"
    assert args[1:] == ["run", str(tmp_path / "serve_config.yaml")]
    assert env["HOME"] == str(tmp_path)
    assert {k: env[k] for k in ONE_MACHINE_ENV} == ONE_MACHINE_ENV
    assert yaml.safe_load((tmp_path / "serve_config.yaml").read_text())["http_options"]["host"] == "0.0.0.0"
