"""AppArgs validation, the shipped Serve config files and their expansion (deployments/topology.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve._private.common import DeploymentID, EndpointInfo
from ray.serve._private.proxy_router import ProxyRouter
from ray.serve.schema import ServeDeploySchema

from deployments import topology
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
            assert deployment.name in served | set(topology.CATALOGUE_DEPLOYMENTS), deployment.name
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


def _shipped_serve_configs() -> list[tuple[str, dict[str, Any]]]:
    """(file, Serve config) for every shipped config and every chart values file with a `serve` block."""
    found = [(path.name, yaml.safe_load(path.read_text())) for path in CONFIGS]
    for path in CHART_VALUES:
        serve = (yaml.safe_load(path.read_text()) or {}).get("serve")
        if serve is not None:
            found.append((f"{path.parent.name}/{path.name}", serve))
    return found


def _verb(model: dict[str, Any]) -> str:
    return "generate" if (model.get("model") or model["name"]) == "digits_dcgan" else "predict"


@pytest.mark.parametrize(("name", "config"), _shipped_serve_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_expanded_config_validates_with_serve_and_routes_only_hot_verbs(name: str, config: dict[str, Any]) -> None:
    """What Serve runs (make serve, the chart) is a valid Serve config whose only route prefixes
    are the catalogue's and each model's exact hot-verb path: never `%3A`, `:explain` or a bare
    model path, which stay with the catalogue."""
    expanded = ServeDeploySchema.model_validate(topology.expand(config))
    routes = [app.route_prefix for app in expanded.applications]
    assert len(set(routes)) == len(routes), name
    expected = []
    for authored in config["applications"]:
        prefix = authored.get("route_prefix", "/")
        expected += [prefix] + [
            f"{prefix.rstrip('/')}/v1/models/{m['name']}:{_verb(m)}" for m in authored["args"]["models"]
        ]
    assert routes == expected, name
    assert not [r for r in routes if "%" in r or r.endswith(":explain")], name
    for app in expanded.applications:
        args = AppArgs.model_validate(app.args)
        assert args.application == config["applications"][0]["name"], app.name
        if app.import_path == topology.MODEL:
            (model,) = args.models
            assert [d.name for d in app.deployments] in ([], [model.name]), app.name
        for deployment in app.deployments:
            if "user_config" in deployment.model_fields_set:
                BatchConfig.model_validate(deployment.user_config)


def _route(config: dict[str, Any], path: str) -> str | None:
    """The application Serve's proxy sends `path` to: the longest route prefix at a `/` boundary
    (HAProxy's per-application ACLs, `path_beg <prefix>/` or `path <prefix>`, match the same)."""
    router = ProxyRouter(get_handle=lambda endpoint, info: None)  # routing only: no handles
    router.update_routes(
        {DeploymentID("ingress", a["name"]): EndpointInfo(route=a["route_prefix"]) for a in config["applications"]}
    )
    match = router.match_route(path)
    return None if match is None else router.route_info[match[0]].app_name


def test_only_a_models_exact_hot_verb_path_reaches_its_own_application() -> None:
    config = topology.expand(yaml.safe_load(CONFIGS[-1].read_text()))
    assert _route(config, "/v1/models/digits_cnn:predict") == "vision-maas-digits_cnn"
    assert _route(config, "/v1/models/digits_dcgan:generate") == "vision-maas-digits_dcgan"
    for path in (
        "/v1/models/digits_cnn%3Apredict",
        "/v1/models/digits_cnn%3apredict",
        "/v1/models/digits_cnn:explain",
        "/v1/models/digits_cnn:predictx",
        "/v1/models/digits_cnn",
        "/v1/models/digits_dcgan:predict",
        "/v1/models",
        "/v2/models/digits_cnn/infer",
    ):
        assert _route(config, path) == "vision-maas", path


def _authored(prefix: str = "/", deployments: list[dict[str, Any]] | None = None, **args: Any) -> dict[str, Any]:
    app = {
        "name": "vision-maas",
        "route_prefix": prefix,
        "import_path": topology.AUTHORED,
        "args": {"models": [{"name": "digits_cnn"}], **args},
    }
    if deployments is not None:
        app["deployments"] = deployments
    return {"applications": [app]}


def test_expansion_under_a_prefix_serves_generators_at_generate() -> None:
    config = _authored(
        "/secured",
        [{"name": "Ingress", "num_replicas": 2}, {"name": "painter", "user_config": {"max_requests": 64}}],
        models=[{"name": "digits_cnn"}, {"name": "digits_dcgan"}, {"name": "painter", "model": "digits_dcgan"}],
    )
    catalogue, cnn, dcgan, painter = topology.expand(config)["applications"]
    assert (catalogue["name"], catalogue["route_prefix"]) == ("vision-maas", "/secured")
    assert catalogue["import_path"] == topology.CATALOGUE
    assert catalogue["deployments"] == [{"name": "Ingress", "num_replicas": 2}]
    assert cnn["route_prefix"] == "/secured/v1/models/digits_cnn:predict"
    assert dcgan["route_prefix"] == "/secured/v1/models/digits_dcgan:generate"
    assert painter["route_prefix"] == "/secured/v1/models/painter:generate"
    assert (painter["name"], painter["import_path"]) == ("vision-maas-painter", topology.MODEL)
    assert painter["args"] == {"models": [{"name": "painter", "model": "digits_dcgan"}], "application": "vision-maas"}
    assert painter["deployments"] == [{"name": "painter", "user_config": {"max_requests": 64}}]
    assert "deployments" not in cnn
    # A trailing slash on the catalogue's prefix gives the same model routes.
    (_, under_slash) = topology.expand(_authored("/secured/"))["applications"]
    assert under_slash["route_prefix"] == cnn["route_prefix"]


@pytest.mark.parametrize("limit", ["max_queued_requests", "max_ongoing_requests"])
def test_expansion_refuses_serves_limits_on_a_model_naming_max_requests(limit: str) -> None:
    with pytest.raises(ValueError, match=rf"'digits_cnn': {limit} .*user_config\.max_requests"):
        topology.expand(_authored(deployments=[{"name": "digits_cnn", limit: 512}]))


def test_expansion_refuses_a_deployment_entry_naming_no_model() -> None:
    with pytest.raises(ValueError, match=r"\['digits_cnnn'\] name no configured model"):
        topology.expand(_authored(deployments=[{"name": "Ingress"}, {"name": "digits_cnnn"}]))


def test_a_one_hop_trained_model_gets_its_own_application_at_its_predict_path() -> None:
    training = {"enabled": True, "store": "/store", "one_hop": ["symbols", "marks"]}
    config = _authored("/api", [{"name": "symbols", "num_replicas": 2}], training=training)
    catalogue, _, symbols, marks = topology.expand(config)["applications"]
    assert catalogue["args"]["training"] == training  # the catalogue keeps the list: its StoreModels serves canaries
    assert (symbols["name"], symbols["route_prefix"], symbols["import_path"]) == (
        "vision-maas-symbols",
        "/api/v1/models/symbols:predict",
        topology.TRAINED,
    )
    assert symbols["args"]["training"] == training | {"one_hop": ["symbols"]}
    assert symbols["args"]["application"] == "vision-maas"
    assert symbols["deployments"] == [{"name": "symbols", "num_replicas": 2}]
    assert marks["route_prefix"] == "/api/v1/models/marks:predict"
    assert "deployments" not in marks
    ServeDeploySchema.model_validate(topology.expand(config))
    # With training off the list serves nothing, and names no deployment entry.
    off = _authored(training=training | {"enabled": False})
    assert [a["name"] for a in topology.expand(off)["applications"]] == ["vision-maas", "vision-maas-digits_cnn"]


@pytest.mark.parametrize(
    ("one_hop", "message"),
    [
        (["digits_cnn"], r"training.one_hop: \['digits_cnn'\] are configured models"),
        (["Symbols"], "'Symbols' is not a model name"),
        (["symbols", "symbols"], "listed twice"),
    ],
)
def test_one_hop_names_trained_models_only_once_each(one_hop: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AppArgs.model_validate({"models": [{"name": "digits_cnn"}], "training": {"enabled": True, "one_hop": one_hop}})


@pytest.mark.slow  # a new Python process importing torch: seconds
def test_topology_command_prints_the_expanded_config_or_writes_it(tmp_path: Path) -> None:
    expected = topology.expand(yaml.safe_load(CONFIGS[-1].read_text()))
    printed = subprocess.run(
        [sys.executable, "-m", "deployments.topology", str(CONFIGS[-1])],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert yaml.safe_load(printed) == expected
    out = tmp_path / "serve_config.yaml"
    assert topology.main([str(CONFIGS[-1]), "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == expected
