"""AppArgs validation and the shipped Serve config files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from deployments.app import INGRESS_OPTIONS, LIMITER_OPTIONS, MODEL_OPTIONS, build_app
from deployments.args import AppArgs, BatchConfig, LimitsArgs

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "deployments").glob("serve_config*.yaml"))
CHART_VALUES = [REPO / "k8s/helm/vision-maas/values.yaml", *sorted((REPO / "k8s/helm/vision-maas/ci").glob("*.yaml"))]


def test_three_configs_ship() -> None:
    assert [p.name for p in CONFIGS] == ["serve_config.bench.yaml", "serve_config.imagenet.yaml", "serve_config.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_validates_against_serve_schema_and_app_args(path: Path) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in config.applications:
        args = AppArgs.model_validate(app.args)
        served = {m.name for m in args.models}
        for deployment in app.deployments:
            assert deployment.name in served | {"Ingress"}, deployment.name
            if "user_config" in deployment.model_fields_set:
                BatchConfig.model_validate(deployment.user_config)
        assert isinstance(build_app(app.args), Application)


def test_default_config_is_offline_cpu_and_serves_the_bundled_models() -> None:
    config = yaml.safe_load((CONFIGS[-1]).read_text())
    app = config["applications"][0]
    assert app["import_path"] == "deployments.app:build_app"
    assert {m["name"] for m in app["args"]["models"]} >= {"digits_cnn"}
    assert all(m.get("weights") in (None, "bundled") for m in app["args"]["models"])
    total_cpus = sum(d.get("ray_actor_options", {}).get("num_cpus", 1) for d in app["deployments"])
    assert total_cpus <= 2
    assert all("num_gpus" not in d.get("ray_actor_options", {}) for d in app["deployments"])


def _args(*models: dict[str, Any]) -> dict[str, Any]:
    return {"models": list(models)}


def test_unknown_model_is_rejected_naming_it() -> None:
    with pytest.raises(ValidationError, match="'resnet_999'"):
        AppArgs.model_validate(_args({"name": "resnet_999"}))


def test_duplicate_model_is_rejected_naming_it() -> None:
    with pytest.raises(ValidationError, match="'digits_cnn' is configured twice"):
        AppArgs.model_validate(_args({"name": "digits_cnn"}, {"name": "digits_cnn"}))


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        AppArgs.model_validate(_args({"name": "digits_cnn", "wieghts": "random"}))
    with pytest.raises(ValidationError, match="extra"):
        AppArgs.model_validate({**_args({"name": "digits_cnn"}), "limitz": {}})


def test_model_names_must_be_snake_case() -> None:
    with pytest.raises(ValidationError, match="snake case"):
        AppArgs.model_validate(_args({"name": "Digits", "model": "digits_cnn"}))


def test_empty_model_list_is_rejected() -> None:
    with pytest.raises(ValidationError):
        AppArgs.model_validate(_args())


def test_a_model_can_be_served_under_another_name() -> None:
    args = AppArgs.model_validate(_args({"name": "classifier", "model": "resnet18", "weights": "random"}))
    assert args.models[0].registry_key == "resnet18"


def test_build_app_rejects_bad_weights_before_any_replica_starts() -> None:
    with pytest.raises(ValueError, match=r"resnet18.*IMAGENET9K"):
        build_app(_args({"name": "resnet18", "weights": "IMAGENET9K"}))


@pytest.mark.parametrize("config", [{"max_batch_size": 0}, {"batch_wait_timeout_s": -1}, {"max_batch": 4}])
def test_batch_config_rejects_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BatchConfig.model_validate(config)


def _shipped_applications() -> list[tuple[str, dict[str, Any]]]:
    """(file, application) for every application a shipped config or chart values file states."""
    found = []
    for path in [*CONFIGS, *CHART_VALUES]:
        document = yaml.safe_load(path.read_text()) or {}
        serve = document.get("serve", document) if path in CHART_VALUES else document
        found += [(path.name, app) for app in serve.get("applications", [])]
    return found


@pytest.mark.parametrize(("name", "app"), _shipped_applications(), ids=lambda v: v if isinstance(v, str) else "")
def test_shipped_configs_state_only_what_they_change(name: str, app: dict[str, Any]) -> None:
    """Defaults have one home (deployments/app.py, deployments/args.py); a config restating one
    would silently keep the old value when the default changes."""
    defaults = {"Ingress": INGRESS_OPTIONS, "RateLimiter": LIMITER_OPTIONS}
    for deployment in app.get("deployments", []):
        own = defaults.get(deployment["name"], MODEL_OPTIONS) | {"num_replicas": 1}  # Serve's own default
        restated = {k: v for k, v in deployment.items() if k != "name" and own.get(k) == v}
        assert not restated, f"{name}: {deployment['name']} restates {restated}"
    limits = LimitsArgs().model_dump()
    restated = {k: v for k, v in app.get("args", {}).get("limits", {}).items() if limits.get(k) == v}
    assert not restated, f"{name}: limits restate {restated}"
