"""Trained versions and their rollouts, in-process: the rules of rollout and rollback on the model
store, the canary's share of :predict through the catalogue's gateway, and the admin scope of the
rollout routes. The store's replica is a stand-in that answers with the version it was routed to
(Serve's multiplexing itself is exercised on a real cluster in tests/integration)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.answers import ClassificationPrediction, PredictResponse
from contract.lifecycle import EvaluationReport, ModelVersion, Rollout, RolloutRequest
from deployments import rollouts
from deployments.args import AuthArgs, LimitsArgs, TrainingArgs
from deployments.auth import hash_key
from deployments.errors import Conflict, ModelNotFound
from deployments.gateway import Gateway
from deployments.rest.app import create_app, lifecycle_routers
from deployments.store import Store, write_json
from tests.lifecycle import canary_share_bound
from tests.unit.test_routes import card

ADMIN = "vmk_" + "a" * 43
TENANT = "vmk_" + "t" * 43
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
IMAGE = {"Content-Type": "image/png"}
V1, V2, V3 = "a" * 12, "b" * 12, "c" * 12
REPORT = EvaluationReport(
    accuracy=1.0,
    macro_precision=1.0,
    macro_recall=1.0,
    macro_f1=1.0,
    per_class={},
    labels=["circle", "square"],
    confusion_matrix=[[1, 0], [0, 1]],
    curve=[],
    train_images=8,
    val_images=2,
)


def synchronous(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test to completion (its fixtures are the coroutine function's parameters)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def add_version(store: Store, name: str, version: str, created: float) -> None:
    record = ModelVersion(
        name=name,
        version=version,
        base_model="digits_cnn",
        dataset="0" * 16,
        categories=["circle", "square"],
        created=created,
        report=REPORT,
    )
    write_json(store.version(name, version) / "version.json", record.model_dump())
    if not store.rollout(name).exists():
        write_json(store.rollout(name), Rollout(name=name, stable=version).model_dump())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.at(str(tmp_path / "store"))
    for created, version in enumerate((V1, V2, V3)):
        add_version(store, "shapes", version, float(created))
    return store


def test_first_version_is_stable_and_the_others_inactive(store: Store) -> None:
    listed = rollouts.list_versions(store, "shapes")
    assert [(v.version, v.state, v.percent) for v in listed] == [
        (V1, "stable", 100),
        (V2, "inactive", 0),
        (V3, "inactive", 0),
    ]


def test_canary_then_promote_then_rollback_walks_the_history(store: Store) -> None:
    canary = rollouts.apply_rollout(store, "shapes", RolloutRequest(version=V2, percent=20))
    assert (canary.stable, canary.canary, canary.percent) == (V1, V2, 20)
    states = {v.version: (v.state, v.percent) for v in rollouts.list_versions(store, "shapes")}
    assert states == {V1: ("stable", 80), V2: ("canary", 20), V3: ("inactive", 0)}

    promoted = rollouts.apply_rollout(store, "shapes", RolloutRequest(version=V2, percent=100))
    assert (promoted.stable, promoted.canary, promoted.percent, promoted.history) == (V2, None, 0, [V1])
    assert rollouts.read_rollout(store, "shapes") == promoted  # kept in the store, not in memory

    dropped = rollouts.apply_rollout(store, "shapes", RolloutRequest(version=V3, percent=5))
    assert rollouts.rollback(store, "shapes") == dropped.model_copy(update={"canary": None, "percent": 0})
    back = rollouts.rollback(store, "shapes")
    assert (back.stable, back.canary, back.history) == (V1, None, [])
    with pytest.raises(Conflict, match="no canary"):
        rollouts.rollback(store, "shapes")


def test_rollout_refuses_unknown_versions_and_the_stable_one_as_canary(store: Store) -> None:
    with pytest.raises(ModelNotFound):
        rollouts.apply_rollout(store, "shapes", RolloutRequest(version="d" * 12, percent=10))
    with pytest.raises(ModelNotFound):
        rollouts.apply_rollout(store, "circles", RolloutRequest(version=V1, percent=10))
    with pytest.raises(Conflict, match="already"):
        rollouts.apply_rollout(store, "shapes", RolloutRequest(version=V1, percent=10))


def test_choose_sends_the_canary_exactly_its_share_of_draws() -> None:
    rollout = Rollout(name="shapes", stable=V1, canary=V2, percent=20)
    draws = [i / 1000 for i in range(1000)]
    assert sum(rollouts.choose(rollout, d) == V2 for d in draws) == 200
    assert rollouts.choose(Rollout(name="shapes", stable=V1), 0.0) == V1


def test_cache_sees_a_rollout_written_by_another_replica(store: Store) -> None:
    cache = rollouts.RolloutCache(store)
    assert cache.route("shapes") == V1
    rollouts.apply_rollout(store, "shapes", RolloutRequest(version=V3, percent=100))
    assert cache.route("shapes") == V3
    assert cache.get("unknown") is None
    assert cache.get("../etc") is None


class StoreReplica:
    """Answers as the StoreModels deployment does, naming the version it was routed to."""

    def __init__(self, model_id: str | None = None, seen: list[str] | None = None) -> None:
        self.model_id = model_id
        self.seen = seen if seen is not None else []

    def options(self, multiplexed_model_id: str) -> StoreReplica:
        return StoreReplica(multiplexed_model_id, self.seen)

    def __getattr__(self, method: str) -> Any:
        replica = self

        class Method:
            def remote(self, *args: Any) -> Any:
                async def call() -> Any:
                    assert replica.model_id is not None
                    name, _, version = replica.model_id.partition("@")
                    replica.seen.append(f"{method}:{replica.model_id}")
                    if method == "card":
                        return card(name, "classification").model_copy(
                            update={"version": version, "labels": ["circle", "square"]}
                        )
                    if method == "metadata":
                        return {"name": name, "model_version": version}
                    return PredictResponse(
                        model=name,
                        model_version=version,
                        weights=f"file:{version}",
                        predictions=[ClassificationPrediction(labels=[]) for _ in args[0]],
                    )

                return call()

        return Method()


def client(store: Store, auth: AuthArgs | None = None) -> tuple[httpx.AsyncClient, StoreReplica]:
    replica = StoreReplica()
    gateway = Gateway(
        {"digits_cnn": StoreReplica("digits_cnn@v1")},
        {"digits_cnn": card("digits_cnn", "classification")},
        LimitsArgs(),
        auth or AuthArgs(enabled=False),
        None,
        TrainingArgs(enabled=True, store=str(store.root)),
        replica,
    )
    app = create_app(gateway, lifecycle_routers(gateway))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), replica


@synchronous
async def test_predict_splits_between_stable_and_canary_by_the_rollout(store: Store) -> None:
    http, replica = client(store)
    async with http:
        answer = await http.post("/v1/models/shapes/rollout", json={"version": V2, "percent": 20})
        assert answer.status_code == 200, answer.text
        versions = []
        for _ in range(500):
            response = await http.post("/v1/models/shapes:predict", content=PNG, headers=IMAGE)
            assert response.status_code == 200, response.text
            versions.append(response.json()["model_version"])
        share = versions.count(V2) / len(versions)
        assert set(versions) == {V1, V2}
        assert abs(share - 0.2) <= canary_share_bound(0.2, len(versions)), share
        # The card is read once per version; every call went to the version its card named.
        assert sum(s.startswith("card:") for s in replica.seen) == 2

        pinned = await http.post(f"/v1/models/shapes/versions/{V3}:predict", content=PNG, headers=IMAGE)
        assert pinned.json()["model_version"] == V3
        missing = await http.post(f"/v1/models/shapes/versions/{'d' * 12}:predict", content=PNG, headers=IMAGE)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"

        promote = await http.post("/v1/models/shapes/rollout", json={"version": V2, "percent": 100})
        assert promote.json() == {"name": "shapes", "stable": V2, "canary": None, "percent": 0, "history": [V1]}
        after = {
            (await http.post("/v1/models/shapes:predict", content=PNG, headers=IMAGE)).json()["model_version"]
            for _ in range(20)
        }
        assert after == {V2}
        back = await http.post("/v1/models/shapes/rollback")
        assert back.json()["stable"] == V1


@synchronous
async def test_trained_models_are_listed_beside_the_configured_ones(store: Store) -> None:
    http, _ = client(store)
    async with http:
        await http.post("/v1/models/shapes/rollout", json={"version": V2, "percent": 50})
        listed = (await http.get("/v1/models")).json()["models"]
        assert [m["name"] for m in listed] == ["digits_cnn", "shapes"]
        assert listed[1]["model_version"] == V1  # the stable version's entry, never the canary's
        versions = (await http.get("/v1/models/shapes/versions")).json()
        assert [(v["version"], v["state"], v["percent"]) for v in versions["versions"]] == [
            (V1, "stable", 50),
            (V2, "canary", 50),
            (V3, "inactive", 0),
        ]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"version": "d" * 12, "percent": 10}, 404, "model_not_found"),
        ({"version": V1, "percent": 10}, 409, "conflict"),
        ({"version": V2, "percent": 0}, 422, "invalid_parameters"),
        ({"version": "HEAD", "percent": 10}, 422, "invalid_parameters"),
        ({"version": V2}, 422, "invalid_parameters"),
    ],
)
@synchronous
async def test_bad_rollouts_are_refused_and_change_nothing(
    store: Store, body: dict[str, Any], status: int, code: str
) -> None:
    http, _ = client(store)
    before = store.rollout("shapes").read_bytes()
    async with http:
        answer = await http.post("/v1/models/shapes/rollout", json=body)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    assert store.rollout("shapes").read_bytes() == before


@synchronous
async def test_rollout_routes_need_the_admin_scope(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    tenants = [
        {"name": "ops", "key_sha256": [hash_key(ADMIN)], "admin": True},
        {"name": "app", "key_sha256": [hash_key(TENANT)]},
    ]
    monkeypatch.setenv("VISION_MAAS_API_KEYS", json.dumps({"tenants": tenants}))
    http, _ = client(store, AuthArgs(enabled=True))
    async with http:
        body = {"version": V2, "percent": 10}
        assert (await http.post("/v1/models/shapes/rollout", json=body)).status_code == 401
        refused = await http.post("/v1/models/shapes/rollout", json=body, headers={"X-API-Key": TENANT})
        assert refused.status_code == 403
        assert (await http.get("/v1/models/shapes/versions", headers={"X-API-Key": TENANT})).status_code == 403
        assert (await http.post("/v1/models/shapes/rollback", headers={"X-API-Key": TENANT})).status_code == 403
        assert rollouts.read_rollout(store, "shapes") == Rollout(name="shapes", stable=V1)
        allowed = await http.post("/v1/models/shapes/rollout", json=body, headers={"X-API-Key": ADMIN})
        assert allowed.status_code == 200
        # Predicting on a trained model needs no admin scope.
        answer = await http.post("/v1/models/shapes:predict", content=PNG, headers=IMAGE | {"X-API-Key": TENANT})
        assert answer.status_code == 200


@synchronous
async def test_lifecycle_routes_are_absent_when_training_is_off(store: Store) -> None:
    training = TrainingArgs(enabled=False, store=str(store.root))
    gateway = Gateway({}, {}, LimitsArgs(), AuthArgs(enabled=False), None, training, StoreReplica())
    app = create_app(gateway, lifecycle_routers(gateway))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        assert (await http.get("/v1/models/shapes/versions")).status_code == 404
        assert (await http.post("/v1/models/shapes:predict", content=PNG, headers=IMAGE)).status_code == 404
