"""The Helm chart: lint, schema validation of every document, security, and config agreement."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments import topology
from deployments.app import INGRESS_OPTIONS, MODEL_OPTIONS
from deployments.args import AppArgs
from tests.k8s.conftest import REPO, VALUE_SETS, by_kind, rayservice, render_module

KUBERNETES_VERSION = "1.30.0"
CORE_KINDS = {"NetworkPolicy", "Ingress", "ServiceAccount"}
PROMETHEUS_KINDS = {"PodMonitor", "ServiceMonitor"}


def pod_templates(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def serve_config(service: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(service["spec"]["serveConfigV2"])
    return config


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_lints_clean_when_rendered_with_each_value_set(name: str) -> None:
    report = helm.lint(render_module.CHART, VALUE_SETS[name], strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert report["messages"] == []


def test_every_document_validates_against_its_schema(
    rendered: list[dict[str, Any]], rayservice_schema: dict[str, Any]
) -> None:
    assert {d["kind"] for d in rendered} <= CORE_KINDS | PROMETHEUS_KINDS | {"RayService"}
    jsonschema.validate(rayservice(rendered), rayservice_schema)
    for doc in rendered:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        elif doc["kind"] in PROMETHEUS_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            endpoints = doc["spec"].get("podMetricsEndpoints") or doc["spec"]["endpoints"]
            assert [e["port"] for e in endpoints] == ["metrics"]


def test_serve_config_parses_with_ray_and_app_args(rendered: list[dict[str, Any]]) -> None:
    config = ServeDeploySchema.model_validate(serve_config(rayservice(rendered)))
    assert config.http_options.port == 8000
    for app in config.applications:
        AppArgs.model_validate(app.args)


def _merged(values: dict[str, Any]) -> dict[str, Any]:
    """The values a release uses: the chart's defaults with `values` over them."""
    merged: dict[str, Any] = helm.Chart.load(render_module.CHART).merge_values(values)
    return merged


def test_serve_config_is_the_serve_values_expanded_as_topology_expands_them(
    value_set: tuple[str, dict[str, Any]], rendered: list[dict[str, Any]]
) -> None:
    """The template's expansion and deployments.topology's are one: `make serve` and the cluster
    run the same applications for the same config."""
    assert serve_config(rayservice(rendered)) == topology.expand(_merged(value_set[1])["serve"])


def test_every_model_gets_its_own_application_at_its_hot_verb(
    value_set: tuple[str, dict[str, Any]], rendered: list[dict[str, Any]]
) -> None:
    (authored,) = _merged(value_set[1])["serve"]["applications"]
    catalogue, *models = serve_config(rayservice(rendered))["applications"]
    assert (catalogue["name"], catalogue["route_prefix"]) == (authored["name"], "/")
    assert catalogue["import_path"] == topology.CATALOGUE
    assert catalogue["args"]["models"] == authored["args"]["models"]
    assert {d["name"] for d in catalogue["deployments"]} == {"Ingress"}
    assert [app["args"]["models"] for app in models] == [[m] for m in authored["args"]["models"]]
    for app in models:
        (model,) = app["args"]["models"]
        verb = "generate" if model["name"] == "digits_dcgan" else "predict"
        assert app["name"] == f"{authored['name']}-{model['name']}"
        assert app["route_prefix"] == f"/v1/models/{model['name']}:{verb}"
        assert app["import_path"] == topology.MODEL
        assert app["args"]["application"] == authored["name"]
        assert [d["name"] for d in app["deployments"]] == [model["name"]]


def test_default_chart_serves_what_the_default_serve_config_serves() -> None:
    local = topology.expand(yaml.safe_load((REPO / "deployments" / "serve_config.yaml").read_text()))
    cluster = serve_config(rayservice(render_module.render()))

    def shape(config: dict[str, Any]) -> list[tuple[str, str, str]]:
        return [(a["name"], a["route_prefix"], a["import_path"]) for a in config["applications"]]

    assert shape(cluster) == shape(local)
    for cluster_app, local_app in zip(cluster["applications"], local["applications"], strict=True):
        app = cluster_app["name"]
        # Deliberate override: API keys are on in the cluster, off (explicitly) on a laptop.
        cluster_args, local_args = dict(cluster_app["args"]), dict(local_app["args"])
        assert cluster_args.pop("auth") == {"enabled": True, "keys_env": "VISION_MAAS_API_KEYS"}, app
        assert local_args.pop("auth") == {"enabled": False}, app
        # Deliberate override: training on a laptop (a job's worker and the trained versions on the
        # laptop's share); a cluster turns it on with a store every node mounts.
        assert local_args.pop("training", None) in (None, {"enabled": True, "cpus_per_worker": 0.1}), app
        assert cluster_args == local_args, app
        local_deployments = {d["name"]: d for d in local_app["deployments"] if d["name"] != "StoreModels"}
        cluster_deployments = {d["name"]: d for d in cluster_app["deployments"]}
        assert set(cluster_deployments) == set(local_deployments), app
        for name, deployment in cluster_deployments.items():
            assert deployment.get("user_config") == local_deployments[name].get("user_config"), name
            # What each replica asks for, with the options a config leaves to the code's defaults.
            default = INGRESS_OPTIONS if name == "Ingress" else MODEL_OPTIONS
            cluster_actor = dict((default | deployment)["ray_actor_options"])
            local_actor = dict((default | local_deployments[name])["ray_actor_options"])
            # Deliberate override: the laptop's models share two cores; cluster replicas get at least as much.
            assert cluster_actor.pop("num_cpus") >= local_actor.pop("num_cpus"), name
            assert cluster_actor == local_actor, name
            # Deliberate override: a cluster autoscales where the laptop runs fixed replicas.
            assert "autoscaling_config" in deployment
    # Deliberate override: listen on every interface inside the pod.
    assert cluster["http_options"] == {"host": "0.0.0.0", "port": 8000, "keep_alive_timeout_s": 75}


def test_only_the_serve_port_is_open_beyond_the_release(rendered: list[dict[str, Any]]) -> None:
    (policy,) = by_kind(rendered, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    release = {"app.kubernetes.io/instance": "vision-maas", "app.kubernetes.io/name": "vision-maas"}
    assert policy["spec"]["podSelector"]["matchLabels"] == release
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        sources = rule.get("from", [])
        if not sources:
            assert ports == {8000}
            continue
        for source in sources:
            if "namespaceSelector" in source:
                namespace = source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                assert namespace in {"kuberay-system", "monitoring"}
                assert ports
                assert ports <= {8265, 6379, 10001, 8080}
            else:
                assert source["podSelector"]["matchLabels"] == release


def test_pods_run_as_non_root_without_privileges(rendered: list[dict[str, Any]]) -> None:
    for template in pod_templates(rayservice(rendered)):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["privileged"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]
            assert container["livenessProbe"]
            assert container["readinessProbe"]


def test_ray_token_auth_is_on_and_the_head_runs_no_replicas(rendered: list[dict[str, Any]]) -> None:
    cluster = rayservice(rendered)["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == "2.60.0"
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_api_keys_are_on_and_read_from_a_secret_in_every_ray_container(rendered: list[dict[str, Any]]) -> None:
    service = rayservice(rendered)
    for app in serve_config(service)["applications"]:
        assert AppArgs.model_validate(app["args"]).auth.enabled
    for template in pod_templates(service):
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            ref = env["VISION_MAAS_API_KEYS"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "vision-maas-api-keys", "key": "keys.yaml"}
            assert "value" not in env["VISION_MAAS_API_KEYS"]


def test_ray_version_matches_the_pinned_ray() -> None:
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    values = yaml.safe_load((render_module.CHART / "values.yaml").read_text())
    assert values["rayVersion"] == pins["ray"]


def test_gpu_values_add_a_gpu_group_and_fractional_gpus() -> None:
    docs = render_module.render(VALUE_SETS["gpu"])
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    spec = gpu["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["containers"][0]["image"].endswith("-gpu")
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["nodeSelector"]
    assert gpu["minReplicas"] == 0
    apps = {a["name"]: a for a in serve_config(rayservice(docs))["applications"]}
    (resnet,) = apps["vision-maas-resnet50"]["deployments"]
    assert apps["vision-maas-resnet50"]["route_prefix"] == "/v1/models/resnet50:predict"
    assert resnet["ray_actor_options"]["num_gpus"] == 0.5
    assert resnet["autoscaling_config"]["target_ongoing_requests"] == 32


def test_ha_values_use_external_redis_and_incremental_upgrades() -> None:
    service = rayservice(render_module.render(VALUE_SETS["ha"]))
    ft = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"].endswith(":6379")
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"] == {"name": "vision-maas-redis", "key": "password"}
    upgrade = service["spec"]["upgradeStrategy"]
    assert upgrade["type"] == "NewClusterWithIncrementalUpgrade"
    assert upgrade["clusterUpgradeOptions"]["stepSizePercent"] == 25


def test_default_upgrade_strategy_is_new_cluster() -> None:
    assert rayservice(render_module.render())["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_ingress_values_route_https_to_the_serve_service() -> None:
    docs = render_module.render(VALUE_SETS["ingress"])
    (ingress,) = by_kind(docs, "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "vision-example-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "vision-maas-serve-svc", "port": {"number": 8000}}
    assert len(by_kind(docs, "PodMonitor")) == len(by_kind(docs, "ServiceMonitor")) == 1


def test_values_schema_rejects_unknown_or_unsafe_values() -> None:
    chart = helm.Chart.load(render_module.CHART)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"workerz": {}})
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"containerSecurityContext": {"allowPrivilegeEscalation": True}})
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"upgradeStrategy": {"type": "Recreate"}})


def test_rendered_manifest_file_is_up_to_date() -> None:
    assert render_module.RENDERED.read_text() == render_module.render_text(), "run `make k8s` to re-render"


def test_chart_verbs_file_is_the_registrys() -> None:
    assert render_module.VERBS.read_text() == render_module.verbs_text(), "run `make k8s` to regenerate"


# An authored application under another prefix serving a generator under another name, beside an
# application the expansion leaves as it is.
OTHER_SHAPES: dict[str, Any] = {
    "serve": {
        "applications": [
            {
                "name": "secured",
                "route_prefix": "/secured",
                "import_path": topology.AUTHORED,
                "args": {
                    "models": [{"name": "painter", "model": "digits_dcgan"}, {"name": "digits_cnn"}],
                    "training": {"enabled": True, "store": "/store", "one_hop": ["symbols", "marks"]},
                },
                "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}},
                "external_scaler_enabled": False,
                "logging_config": {"log_level": "DEBUG"},
                "deployments": [
                    {"name": "RateLimiter", "num_replicas": 2},
                    {"name": "painter", "user_config": {"max_requests": 64}},
                    {"name": "StoreModels", "num_replicas": 2},
                    {"name": "symbols", "ray_actor_options": {"num_cpus": 0.5}},
                ],
            },
            {"name": "echo", "route_prefix": "/echo", "import_path": "echo:app", "args": {"greeting": "hi"}},
        ]
    }
}


def test_chart_expands_other_prefixes_registry_names_and_foreign_applications_like_topology() -> None:
    config = serve_config(rayservice(render_module.render(OTHER_SHAPES)))
    assert config == topology.expand(_merged(OTHER_SHAPES)["serve"])
    routes = {a["name"]: a["route_prefix"] for a in config["applications"]}
    assert routes == {
        "secured": "/secured",
        "secured-painter": "/secured/v1/models/painter:generate",
        "secured-digits_cnn": "/secured/v1/models/digits_cnn:predict",
        "secured-symbols": "/secured/v1/models/symbols:predict",
        "secured-marks": "/secured/v1/models/marks:predict",
        "echo": "/echo",
    }


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        ({"name": "digits_cnn", "max_queued_requests": 512}, "max_queued_requests .*user_config.max_requests"),
        ({"name": "digits_cnn", "max_ongoing_requests": 8}, "max_ongoing_requests .*user_config.max_requests"),
        ({"name": "digits_cnnn"}, "digits_cnnn.* name no configured model"),
    ],
)
def test_chart_refuses_what_topology_refuses(deployment: dict[str, Any], message: str) -> None:
    serve = {
        "applications": [
            {
                "name": "vision-maas",
                "import_path": topology.AUTHORED,
                "args": {"models": [{"name": "digits_cnn"}]},
                "deployments": [deployment],
            }
        ]
    }
    with pytest.raises(ValueError, match=message):
        topology.expand(serve)
    with pytest.raises(helm.HelmRenderError, match=message):
        render_module.render({"serve": serve})


def test_chart_refuses_a_model_the_registry_does_not_have() -> None:
    serve = {"applications": [{"name": "a", "import_path": topology.AUTHORED, "args": {"models": [{"name": "nope"}]}}]}
    with pytest.raises(helm.HelmRenderError, match='"nope" is not a registry model'):
        render_module.render({"serve": serve})


def test_notes_tell_how_to_reach_the_service() -> None:
    manifests = helm.Chart.load(render_module.CHART).render({}, name="vision-maas", namespace="ml")
    notes = manifests["vision-maas/templates/NOTES.txt"]
    assert "port-forward svc/vision-maas-serve-svc 8000:8000" in notes
    assert "/v1/models/digits_cnn:predict" in notes


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed: `make tools` installs kubernetes-client"
)
def test_kustomization_builds_the_rendered_manifest() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(Path(render_module.K8S))], check=True, capture_output=True, text=True
    ).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    assert kinds == ["NetworkPolicy", "RayService", "ServiceAccount"]
