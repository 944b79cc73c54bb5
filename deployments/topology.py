"""One list of models in, one Serve application per model out.

A config lists the served models once, in one application (`import_path: deployments.app:build_app`,
the shape every shipped config and the chart's values keep). `expand` turns each such application
into what Serve runs:

- one application per model, `<app>-<model>`, whose single deployment is the batched model and
  also the HTTP ingress of that model's hot verb: its route prefix is the exact path
  `<prefix>/v1/models/<model>:predict` (`:generate` for generators). Under Serve's HAProxy mode an
  application's ingress replicas get the HTTP traffic directly, so `:predict` reaches the replica
  that runs the model in one hop (`deployments.app:build_model`);
- the catalogue application, `<app>` at `<prefix>`: every other route (the catalogue, `:explain`,
  annotate, /v2, docs, metrics, the playground, unknown models, an encoded `%3A` verb), calling the
  model applications over handles (`deployments.app:build_catalogue`);
- with training on, one application per trained model listed in `training.one_hop`, `<app>-<name>`,
  at `<prefix>/v1/models/<name>:predict`: its replicas hold the model's stable version and answer
  HTTP themselves; a canary's share passes on to the catalogue's StoreModels
  (`deployments.app:build_trained`). Other trained models are served through the catalogue.

Route prefixes match at `/` boundaries and the longest wins, so `/v1/models/digits_cnn:predict`
goes to its model's application and `/v1/models/digits_cnn:explain` to the catalogue.

    python -m deployments.topology deployments/serve_config.yaml > serve_config.expanded.yaml

`make serve`, the test clusters and the benchmarks expand their configs with this module; the
chart expands its values with the same rules (templates/rayservice.yaml), and a test holds the two
to the same output.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from contract.tasks import Task

# The import path a config's authors write: one application listing its models.
AUTHORED = "deployments.app:build_app"
CATALOGUE = "deployments.app:build_catalogue"
MODEL = "deployments.app:build_model"
TRAINED = "deployments.app:build_trained"
# What an application's entries other than the models' are (they stay in the catalogue).
CATALOGUE_DEPLOYMENTS = ("Ingress", "RateLimiter", "StoreModels", "TrainingJobs")
# Serve's own limits answer plain text: a model's admission is its user_config's max_requests,
# answered by the replica in the API's JSON (deployments/image_model.py).
SERVE_LIMITS = ("max_ongoing_requests", "max_queued_requests")
# Keys of an application that every application it expands into keeps.
SHARED_KEYS = ("runtime_env", "logging_config", "external_scaler_enabled")


def model_app_name(app: str, model: str) -> str:
    """The Serve application that serves `model` of the catalogue application `app`."""
    return f"{app}-{model}"


def task_verb(task: Task) -> str:
    """The verb a model's own application answers: `generate` for generators, else `predict`."""
    return "generate" if task == Task.GENERATION else "predict"


def hot_verb(registry_model: str) -> str:
    """The hot verb of a registry model (task_verb of its task)."""
    from models.registry import get_entry  # imported here: this module needs no model code

    return task_verb(get_entry(registry_model).task)


def hot_route(prefix: str, model: str, verb: str) -> str:
    """The exact path of a model's hot verb under the catalogue's route prefix."""
    return f"{prefix.rstrip('/')}/v1/models/{model}:{verb}"


def expand_app(app: dict[str, Any]) -> list[dict[str, Any]]:
    """One authored application -> the catalogue application, then one per model."""
    if app.get("import_path") != AUTHORED:
        return [copy.deepcopy(app)]
    name = app["name"]
    prefix = app.get("route_prefix", "/")
    args = copy.deepcopy(app.get("args") or {})
    models = args.get("models") or []
    entries = {d["name"]: copy.deepcopy(d) for d in app.get("deployments") or []}
    names = [m["name"] for m in models]
    training = args.get("training") or {}
    trained = list(training.get("one_hop") or []) if training.get("enabled") else []
    names += trained
    unknown = set(entries) - set(names) - set(CATALOGUE_DEPLOYMENTS)
    if unknown:
        raise ValueError(f"application {name!r}: deployments {sorted(unknown)} name no configured model")
    shared = {k: copy.deepcopy(app[k]) for k in SHARED_KEYS if k in app}
    catalogue = {
        "name": name,
        "route_prefix": prefix,
        "import_path": CATALOGUE,
        "args": copy.deepcopy(args) | {"application": name},
        **shared,
    }
    kept = [entries[d] for d in CATALOGUE_DEPLOYMENTS if d in entries]
    if kept:
        catalogue["deployments"] = kept
    expanded = [catalogue]
    for model in models:
        entry = entries.get(model["name"])
        if entry is not None:
            refused = [k for k in SERVE_LIMITS if k in entry]
            if refused:
                raise ValueError(
                    f"model {model['name']!r}: {', '.join(refused)} would answer overload in Serve's plain text; "
                    "set user_config.max_requests instead (the replica answers 503 in the API's JSON)"
                )
        verb = hot_verb(model.get("model") or model["name"])
        one = {
            "name": model_app_name(name, model["name"]),
            "route_prefix": hot_route(prefix, model["name"], verb),
            "import_path": MODEL,
            "args": copy.deepcopy(args) | {"models": [copy.deepcopy(model)], "application": name},
            **shared,
        }
        if entry is not None:
            one["deployments"] = [entry]
        expanded.append(one)
    for model_name in trained:
        one = {
            "name": model_app_name(name, model_name),
            "route_prefix": hot_route(prefix, model_name, "predict"),
            "import_path": TRAINED,
            "args": copy.deepcopy(args) | {"training": training | {"one_hop": [model_name]}, "application": name},
            **shared,
        }
        if model_name in entries:
            one["deployments"] = [entries[model_name]]
        expanded.append(one)
    return expanded


def expand(config: dict[str, Any]) -> dict[str, Any]:
    """A Serve config with every authored application expanded (others are kept as they are)."""
    out = copy.deepcopy(config)
    out["applications"] = [a for app in config.get("applications") or [] for a in expand_app(app)]
    return out


def expand_file(path: Path) -> str:
    """The expanded config of the YAML file at `path`, as YAML."""
    return yaml.safe_dump(expand(yaml.safe_load(path.read_text())), sort_keys=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.topology", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="a Serve config listing its models once")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    options = parser.parse_args(argv)
    text = expand_file(options.config)
    if options.output is None:
        sys.stdout.write(text)
    else:
        options.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
