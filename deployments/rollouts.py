"""Trained versions and their rollouts: which version answers a trained model's `:predict`.

A model's rollout (contract.lifecycle.Rollout) lives in the model store (deployments.store), so a
restart of the whole application keeps it: the stable version, at most one canary with its share of
traffic, and the earlier stable versions that `rollback` returns to. Every change is one
read-modify-write of `rollout.json` under an exclusive lock on the model's folder, so the catalogue's
replicas may change it at once. Each replica reads the file again when it changes (one `stat` per
request), so a rollout takes effect everywhere within a request.

The canary split is per request: a canary at `percent` answers that share of `:predict`, chosen at
random (not per client: a client that must always see one version asks for it by name,
`/v1/models/{model}/versions/{version}:predict`)."""

from __future__ import annotations

import contextvars
import fcntl
import os
import random
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.lifecycle import VERSION_PATTERN, ModelVersion, Rollout, RolloutRequest
from contract.tasks import MODEL_NAME
from deployments.errors import Conflict, ModelNotFound
from deployments.schemas import ModelCard
from deployments.store import Store, read_json, write_json

_VERSION = re.compile(VERSION_PATTERN)


def _is_version(version: str) -> bool:
    return bool(_VERSION.fullmatch(version))


@contextmanager
def _locked(store: Store, name: str) -> Iterator[None]:
    """An exclusive lock on one model's rollout (flock: released when the holder dies)."""
    folder = store.models / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_rollout(store: Store, name: str) -> Rollout | None:
    """The model's rollout, or None when the store has no trained model of that name."""
    if not MODEL_NAME.fullmatch(name):
        return None
    try:
        return Rollout.model_validate(read_json(store.rollout(name)))
    except FileNotFoundError:
        return None


def require_rollout(store: Store, name: str) -> Rollout:
    """The model's rollout (404 when the store has no trained model of that name)."""
    rollout = read_rollout(store, name)
    if rollout is None:
        raise ModelNotFound(f"the model store has no trained model {name!r}")
    return rollout


def read_version(store: Store, name: str, version: str) -> ModelVersion:
    """One version's record (404 when the store has no such version)."""
    if not MODEL_NAME.fullmatch(name) or not _is_version(version):
        raise ModelNotFound(f"model {name!r} has no version {version!r}")
    try:
        return ModelVersion.model_validate(read_json(store.version(name, version) / "version.json"))
    except FileNotFoundError:
        raise ModelNotFound(f"model {name!r} has no version {version!r}; see GET /v1/models/{name}/versions") from None


def with_state(record: ModelVersion, rollout: Rollout) -> ModelVersion:
    """The version's record with its place in the rollout (stable, canary, previous) and its share."""
    version = record.version
    if version == rollout.canary:
        return record.model_copy(update={"state": "canary", "percent": rollout.percent})
    if version == rollout.stable:
        share = 100 - rollout.percent if rollout.canary else 100
        return record.model_copy(update={"state": "stable", "percent": share})
    state = "previous" if version in rollout.history else "inactive"
    return record.model_copy(update={"state": state, "percent": 0})


def list_versions(store: Store, name: str) -> list[ModelVersion]:
    """Every version of a trained model, oldest first, each with its state (404 for an unknown model)."""
    rollout = require_rollout(store, name)
    folder = store.versions(name)
    versions = [
        read_version(store, name, entry.name)
        for entry in (sorted(folder.iterdir()) if folder.is_dir() else [])
        if _is_version(entry.name) and (entry / "version.json").is_file()
    ]
    return sorted((with_state(v, rollout) for v in versions), key=lambda v: (v.created, v.version))


def apply_rollout(store: Store, name: str, request: RolloutRequest) -> Rollout:
    """Send `percent` of :predict to `version` (a canary), or promote it at 100."""
    read_version(store, name, request.version)  # 404 for a version the store does not hold
    with _locked(store, name):
        rollout = read_rollout(store, name) or Rollout(name=name)
        if request.percent == 100:
            if request.version != rollout.stable:
                history = [*rollout.history, rollout.stable] if rollout.stable else rollout.history
                rollout = Rollout(name=name, stable=request.version, history=history)
            else:
                rollout = rollout.model_copy(update={"canary": None, "percent": 0})
        else:
            if request.version == rollout.stable:
                raise Conflict(f"version {request.version!r} is already {name!r}'s stable version")
            rollout = rollout.model_copy(update={"canary": request.version, "percent": request.percent})
        write_json(store.rollout(name), rollout.model_dump())
    return rollout


def rollback(store: Store, name: str) -> Rollout:
    """Drop the canary; without one, return to the previous stable version (409 when there is none)."""
    with _locked(store, name):
        rollout = require_rollout(store, name)
        if rollout.canary is not None:
            rollout = rollout.model_copy(update={"canary": None, "percent": 0})
        elif rollout.history:
            rollout = Rollout(name=name, stable=rollout.history[-1], history=rollout.history[:-1])
        else:
            raise Conflict(f"model {name!r} has no canary and no earlier version to roll back to")
        write_json(store.rollout(name), rollout.model_dump())
    return rollout


def choose(rollout: Rollout, draw: float) -> str | None:
    """The version that answers one :predict, `draw` uniform in [0, 1)."""
    if rollout.canary is not None and draw * 100.0 < rollout.percent:
        return rollout.canary
    return rollout.stable


@dataclass
class _Cached:
    stamp: tuple[int, int]
    rollout: Rollout


class RolloutCache:
    """Each model's rollout as the store holds it, read again only when its file changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cached: dict[str, _Cached] = {}
        self._random = random.Random()

    def get(self, name: str) -> Rollout | None:
        """The current rollout, or None when the store has no trained model `name`."""
        if not MODEL_NAME.fullmatch(name):
            return None
        path: Path = self.store.rollout(name)
        try:
            status = os.stat(path)
        except FileNotFoundError:
            self._cached.pop(name, None)
            return None
        stamp = (status.st_mtime_ns, status.st_ino)
        cached = self._cached.get(name)
        if cached is None or cached.stamp != stamp:
            rollout = read_rollout(self.store, name)
            if rollout is None:
                return None
            cached = self._cached[name] = _Cached(stamp, rollout)
        return cached.rollout

    def route(self, name: str) -> str | None:
        """The version that answers this :predict of trained model `name` (None: not a trained model)."""
        rollout = self.get(name)
        if rollout is None:
            return None
        return choose(rollout, self._random.random())


# The "name@version" that gate() chose for this request, read back by call(): one :predict draws its
# version once, so its card and its answer come from the same version.
_ROUTED: contextvars.ContextVar[str | None] = contextvars.ContextVar("vision_maas_trained_version", default=None)


def model_id(name: str, version: str) -> str:
    """The multiplexed model id of one trained version (deployments.store_models)."""
    return f"{name}@{version}"


class TrainedModels:
    """The catalogue's view of the store's trained models: which version answers, its card, and the
    handle that reaches a replica holding it (Serve's multiplexing routes by the version's id)."""

    def __init__(self, store: Store, handle: Any) -> None:
        self.rollouts = RolloutCache(store)
        self._handle = handle
        # Versions are immutable, so their cards are kept for good once read.
        self._cards: dict[str, ModelCard] = {}

    def serves(self, name: str) -> bool:
        """Whether `name` is a trained model of the store."""
        return self.rollouts.get(name) is not None

    async def card(self, name: str, version: str | None, fetch: Callable[[], Awaitable[ModelCard]]) -> ModelCard:
        """The card of the version that answers this request (the rollout's pick, or `version`);
        `fetch` asks the version's replica for it (the gateway's call, its errors mapped) once."""
        if version is None:
            version = self.rollouts.route(name)
            if version is None:
                raise ModelNotFound(f"model {name!r} is not served; see GET /v1/models")
        key = model_id(name, version)
        card = self._cards.get(key)
        if card is None:
            if not self.serves(name):
                raise ModelNotFound(f"model {name!r} is not served; see GET /v1/models")
            read_version(self.rollouts.store, name, version)  # 404 for a version the store lacks
        _ROUTED.set(key)
        if card is None:
            card = self._cards[key] = await fetch()
        return card

    def handle(self, key: str) -> Any:
        """The handle whose calls reach a replica with version `key` loaded."""
        return self._handle.options(multiplexed_model_id=key)

    def pin_stable(self, name: str) -> None:
        """Route this request's calls of `name` to its stable version (its catalogue entry)."""
        rollout = self.rollouts.get(name)
        if rollout is None or rollout.stable is None:
            raise ModelNotFound(f"model {name!r} is not served; see GET /v1/models")
        _ROUTED.set(model_id(name, rollout.stable))

    def routed(self, name: str) -> Any:
        """The handle for this request's call of trained model `name` (its version drawn by card())."""
        key = _ROUTED.get()
        if key is None or key.partition("@")[0] != name:
            version = self.rollouts.route(name)
            if version is None:
                raise ModelNotFound(f"model {name!r} is not served; see GET /v1/models")
            key = model_id(name, version)
        return self.handle(key)

    def names(self) -> list[str]:
        """The trained models whose rollout has a stable version."""
        folder = self.rollouts.store.models
        names = sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
        return [name for name in names if (rollout := self.rollouts.get(name)) is not None and rollout.stable]
