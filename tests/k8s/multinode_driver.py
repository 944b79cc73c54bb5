"""Deploy a Serve config onto a running multi-node Ray cluster and report where replicas run.

Run as a separate process (a test process can join only one Ray cluster):
    python tests/k8s/multinode_driver.py ADDRESS CONFIG.yaml HTTP_PORT
Prints one JSON line: {"worker_nodes": [...], "head_node": ..., "replicas": {name: node_id}}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ray
import yaml
from ray import serve
from ray.serve._private import api as serve_api
from ray.serve.schema import ServeDeploySchema
from ray.util.state import list_actors


def main(address: str, config_path: str, port: int) -> int:
    ray.init(address=address, log_to_driver=False)
    config = yaml.safe_load(Path(config_path).read_text())
    # Deliberate overrides: both "nodes" share 127.0.0.1, so one proxy (on the head) on a free port.
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": port}
    config["proxy_location"] = "HeadOnly"
    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(http_options=config["http_options"], proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    names = [app.name for app in schema.applications]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = serve.status().applications
        if all(n in status and status[n].status == "RUNNING" for n in names):
            break
        if any(n in status and status[n].status == "DEPLOY_FAILED" for n in names):
            print(json.dumps({"error": {n: status[n].message for n in names if n in status}}))
            return 1
        time.sleep(1)
    else:
        print(json.dumps({"error": "not running after 300s"}))
        return 1
    nodes = [n for n in ray.nodes() if n["Alive"]]
    head = next(n["NodeID"] for n in nodes if n["Resources"].get("CPU", 0) == 0)
    workers = [n["NodeID"] for n in nodes if n["Resources"].get("CPU", 0) > 0]
    replicas = {
        actor.name: actor.node_id
        for actor in list_actors(
            address=os.environ.get("RAY_API_SERVER_ADDRESS"), filters=[("state", "=", "ALIVE")], limit=1000
        )
        if actor.class_name.startswith("ServeReplica:")
    }
    print(json.dumps({"head_node": head, "worker_nodes": workers, "replicas": replicas}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
