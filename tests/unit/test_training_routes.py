"""The training job routes in process, over the TrainingJobs class itself (no Ray): the admin scope
comes first, then the service's own refusals, in the API's error shape."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.args import AuthArgs, LimitsArgs, TrainingArgs
from deployments.auth import hash_key
from deployments.gateway import Gateway, LocalHandle
from deployments.rest.app import create_app, lifecycle_routers
from deployments.training import TrainingJobs

ADMIN, TENANT = "vmk_" + "a" * 43, "vmk_" + "b" * 43
JOBS = "/v1/training/jobs"


@pytest.fixture
def call(tmp_path: Path) -> Any:
    keys = {
        "tenants": [
            {"name": "ops", "key_sha256": [hash_key(ADMIN)], "admin": True},
            {"name": "app", "key_sha256": [hash_key(TENANT)]},
        ]
    }
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    auth = AuthArgs(enabled=True, keys_file=str(tmp_path / "keys.json"))
    training = TrainingArgs(enabled=True, store=str(tmp_path / "store"))
    service = TrainingJobs.func_or_class(training, ["digits_cnn"])  # type: ignore[attr-defined]
    gateway = Gateway({}, {}, LimitsArgs(), auth, None, training, training_jobs=LocalHandle(service))
    app = create_app(gateway, lifecycle_routers(gateway))

    def request(method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
                return await client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)

        return asyncio.run(send())

    return request


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_a_tenant_without_the_admin_scope_is_refused_on_every_route(call: Any) -> None:
    body = {"name": "shapes", "base_model": "digits_cnn", "dataset": "0" * 16}
    assert error(call("POST", JOBS, TENANT, json=body)) == (403, "forbidden")
    assert error(call("GET", JOBS, TENANT)) == (403, "forbidden")
    assert error(call("GET", f"{JOBS}/x", TENANT)) == (403, "forbidden")
    assert error(call("DELETE", f"{JOBS}/x", TENANT)) == (403, "forbidden")
    assert error(call("GET", f"{JOBS}/x/events", TENANT)) == (403, "forbidden")


def test_an_admin_gets_the_services_answers(call: Any) -> None:
    assert call("GET", JOBS, ADMIN).json() == {"jobs": []}
    taken = {"name": "digits_cnn", "base_model": "digits_cnn", "dataset": "0" * 16}
    assert error(call("POST", JOBS, ADMIN, json=taken)) == (409, "conflict")
    detector = {"name": "mine", "base_model": "digits_detector", "dataset": "0" * 16}
    assert error(call("POST", JOBS, ADMIN, json=detector)) == (422, "invalid_parameters")
    missing = {"name": "mine", "base_model": "digits_cnn", "dataset": "0" * 16}
    assert error(call("POST", JOBS, ADMIN, json=missing)) == (404, "not_found")
    assert error(call("POST", JOBS, ADMIN, json=missing | {"extra": 1})) == (422, "invalid_parameters")
    assert error(call("GET", f"{JOBS}/nosuch", ADMIN)) == (404, "not_found")
    assert error(call("DELETE", f"{JOBS}/nosuch", ADMIN)) == (404, "not_found")


def test_the_routes_are_mounted_only_when_training_is_on_and_answer_503_without_the_service(tmp_path: Path) -> None:
    gateway = Gateway({}, {}, LimitsArgs(), AuthArgs(enabled=False), None)
    paths = create_app(gateway, lifecycle_routers(gateway)).openapi()["paths"]
    assert not [path for path in paths if path.startswith(JOBS)]
    training = TrainingArgs(enabled=True, store=str(tmp_path / "store"))
    gateway = Gateway({}, {}, LimitsArgs(), AuthArgs(enabled=False), None, training)
    app = create_app(gateway, lifecycle_routers(gateway))

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress") as client:
            return await client.get(JOBS)

    assert error(asyncio.run(send())) == (503, "unavailable")


def test_a_data_set_in_use_by_a_queued_job_is_not_deleted_until_the_job_ends(tmp_path: Path) -> None:
    from contract.lifecycle import TrainingJob, TrainingJobRequest
    from deployments.store import Store, write_json
    from models.training import shapes

    training = TrainingArgs(enabled=True, store=str(tmp_path / "store"))
    store = Store.at(training.store)
    store.datasets.mkdir(parents=True, exist_ok=True)
    dataset = shapes.write_dataset(store.datasets, shapes.draw_set(3, seed=0)).id
    request = TrainingJobRequest(name="shapes", base_model="digits_cnn", dataset=dataset)
    store.jobs.mkdir(parents=True, exist_ok=True)
    write_json(
        store.job("j1"), TrainingJob(id="j1", status="queued", request=request, created=0.0).model_dump(mode="json")
    )
    service = TrainingJobs.func_or_class(training, ["digits_cnn"])  # type: ignore[attr-defined]
    service._started = True  # the job stays queued: nothing here runs Ray Train
    gateway = Gateway({}, {}, LimitsArgs(), AuthArgs(enabled=False), None, training, training_jobs=LocalHandle(service))
    app = create_app(gateway, lifecycle_routers(gateway))

    def send(method: str, path: str) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress") as client:
                return await client.request(method, path)

        return asyncio.run(go())

    refused = send("DELETE", f"/v1/datasets/{dataset}")
    assert error(refused) == (409, "conflict")
    assert "j1" in refused.json()["error"]["message"]
    assert send("GET", f"/v1/datasets/{dataset}").status_code == 200  # nothing removed
    assert send("DELETE", f"{JOBS}/j1").json()["status"] == "cancelled"
    assert send("DELETE", f"/v1/datasets/{dataset}").status_code == 204
    assert error(send("DELETE", f"/v1/datasets/{dataset}")) == (404, "not_found")
