"""The model store: one directory holding uploaded data sets, training jobs, trained versions and
their rollout state, so that all of it survives a restart of the application.

    <root>/datasets/<id>/dataset.json          contract.lifecycle.Dataset
    <root>/datasets/<id>/images/<label>/<n>.png the kept images, decoded and re-encoded
    <root>/jobs/<id>.json                      contract.lifecycle.TrainingJob
    <root>/models/<name>/versions/<version>/   model.safetensors, version.json (ModelVersion), MANIFEST.json(.sig)
    <root>/models/<name>/rollout.json          contract.lifecycle.Rollout
    <root>/checkpoints/<job>/                  Ray Train's runs (when no other storage_path is set)
    <root>/keys/deployment-signing.pem(.pub)   a one-machine store's own signing key (deployments/training.py)

Every JSON file is replaced atomically (written beside, then renamed): a reader sees the old
file or the new one, never half of one. On a cluster the root is a volume every node mounts."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The JSON at `path` (FileNotFoundError when absent)."""
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Store:
    """Where each kind of record lives under the store's root."""

    root: Path

    @classmethod
    def at(cls, root: str) -> Store:
        """The store at `root` (`~` expanded; created on first write)."""
        return cls(Path(root).expanduser().resolve())

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset(self, dataset_id: str) -> Path:
        return self.datasets / dataset_id

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def job(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def versions(self, name: str) -> Path:
        return self.models / name / "versions"

    def version(self, name: str, version: str) -> Path:
        return self.versions(name) / version

    def rollout(self, name: str) -> Path:
        return self.models / name / "rollout.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def keys(self) -> Path:
        return self.root / "keys"
