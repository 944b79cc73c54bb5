"""The chart's head and worker pod templates, run as containers, form one Ray cluster that serves."""

from __future__ import annotations

from typing import Any

import httpx
import yaml

from tests.container import pods
from tests.container.cluster import MODEL, network, one_model_values, pod_cluster
from tests.container.conftest import BuiltImage, wait_until


def replica_ips(details: dict[str, Any]) -> set[str]:
    """The node address of every Serve replica in Serve's details."""
    return {
        replica["node_ip"]
        for app in details["applications"].values()
        for deployment in app["deployments"].values()
        for replica in deployment["replicas"]
    }


def predict(url: str, api_key: str | None, png: bytes) -> httpx.Response:
    headers = {"Content-Type": "image/png"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})
    return httpx.post(f"{url}/v1/models/{MODEL}:predict", content=png, headers=headers, timeout=60)


def test_chart_pods_form_one_cluster_that_serves_from_the_worker_with_ray_token_auth(
    built_image: BuiltImage, digit_pngs: list[tuple[bytes, int]]
) -> None:
    with network() as net, pod_cluster(built_image.ref, net, one_model_values()) as cluster:
        assert cluster.service["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
        # Ray's token guards the head: the dashboard refuses a caller without it.
        refused = httpx.get(f"{cluster.dashboard}/api/serve/applications/", timeout=30)
        assert refused.status_code in (401, 403), refused.text

        def joined() -> bool:
            return len([n for n in cluster.nodes() if n["state"] == "ALIVE"]) == 2

        wait_until(joined, 180, f"the worker joining the head\n{cluster.logs()}", poll_s=2.0)
        by_ip = {n["node_ip"]: n for n in cluster.nodes()}
        assert by_ip[cluster.head_ip]["is_head_node"]
        assert by_ip[cluster.head_ip]["resources_total"].get("CPU", 0) == 0  # num-cpus "0": no replicas
        assert by_ip[cluster.worker_ip]["resources_total"]["CPU"] == 2  # the worker's CPU limit

        config = yaml.safe_load(cluster.service["spec"]["serveConfigV2"])
        cluster.deploy(config)
        details = cluster.wait_running([app["name"] for app in config["applications"]])
        assert replica_ips(details) == {cluster.worker_ip}

        worker = cluster.service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
        probe = worker["containers"][0]
        wait_until(lambda: pods.probe(cluster.worker, probe, "readinessProbe"), 60, "the worker's readiness probe")
        png, label = digit_pngs[1]
        for node, url in cluster.serve_urls.items():
            assert predict(url, None, png).status_code == 401, node
            response = predict(url, cluster.api_key, png)
            assert response.status_code == 200, (node, response.text)
            assert response.json()["predictions"][0]["labels"][0]["label"] == str(label), node
        assert pods.probe(cluster.worker, probe, "livenessProbe")
