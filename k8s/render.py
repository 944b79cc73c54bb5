"""Render the Helm chart offline through Helm's Go SDK; writes k8s/rayservice.yaml.

python k8s/render.py            # refresh the chart's files/verbs.yaml, then k8s/rayservice.yaml (defaults)
python k8s/render.py -f ci/gpu-values.yaml   # print another value set

The chart gives every model its own Serve application whose route prefix is the model's hot verb
(deployments/topology.py); which verb a registry model answers is the registry's fact, so this
script writes it into the chart (files/verbs.yaml) for the template to read, and a test fails when
that file is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

K8S = Path(__file__).resolve().parent
CHART = K8S / "helm" / "vision-maas"
RENDERED = K8S / "rayservice.yaml"
VERBS = CHART / "files" / "verbs.yaml"
RELEASE = "vision-maas"
NAMESPACE = "vision-maas"
HEADER = (
    "# Rendered from k8s/helm/vision-maas with default values (release vision-maas,\n"
    "# namespace vision-maas) by `make k8s`. Do not edit: change the chart and re-render.\n"
    "# kubectl create namespace vision-maas && kubectl -n vision-maas apply -f k8s/rayservice.yaml\n"
)
VERBS_HEADER = (
    "# Generated from the model registry by `make k8s` (k8s/render.py). Do not edit.\n"
    "# The verb each registry model's own Serve application answers (deployments.topology.hot_verb):\n"
    "# templates/_helpers.tpl routes `<prefix>/v1/models/<name>:<verb>` to it.\n"
)


def verbs_text() -> str:
    """files/verbs.yaml: every registry model and the verb its own Serve application answers."""
    if str(K8S.parent) not in sys.path:  # run as a script: the registry of this checkout
        sys.path.insert(0, str(K8S.parent))
    from deployments.topology import hot_verb
    from models.registry import list_models

    lines = [f"{model}: {hot_verb(model)}\n" for model in list_models()]
    return VERBS_HEADER + "".join(lines)


def render_text(values: dict[str, Any] | None = None, name: str = RELEASE, namespace: str = NAMESPACE) -> str:
    """The chart's manifests as one multi-document YAML text, like `helm template`."""
    manifests = helm.Chart.load(CHART).render(values or {}, name=name, namespace=namespace, is_install=True)
    parts = [
        f"---\n# Source: {path}\n{manifests[path].strip()}\n"
        for path in sorted(manifests)
        if not path.endswith(".txt") and manifests[path].strip()
    ]
    return HEADER + "".join(parts)


def render(
    values: dict[str, Any] | None = None, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Every Kubernetes document the chart renders for `values`, in template order."""
    return [doc for doc in yaml.safe_load_all(render_text(values, name, namespace)) if doc]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--values", type=Path, help="values file, relative to the chart")
    args = parser.parse_args(argv)
    if args.values:
        values = yaml.safe_load((CHART / args.values).read_text())
        sys.stdout.write(render_text(values))
    else:
        VERBS.parent.mkdir(exist_ok=True)
        VERBS.write_text(verbs_text())
        print(f"wrote {VERBS.relative_to(K8S.parent)}")
        RENDERED.write_text(render_text())
        print(f"wrote {RENDERED.relative_to(K8S.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
