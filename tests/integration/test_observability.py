"""Metrics, the Grafana dashboard's queries, request ids and structured logs, on the real app."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "k8s" / "grafana" / "vision-maas-dashboard.json"
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# Ray's node metrics that exist only where GPUs do (Ray documents them; CI has no GPU).
GPU_ONLY = {"ray_node_gpus_utilization", "ray_node_gram_used"}
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "avg", "max", "le", "model", "status", "reason"}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match.group("labels") or ""))
            out.append((match.group("name"), labels, float(match.group("value"))))
    return out


Want = tuple[str, dict[str, str], float]
PREDICT = "/v1/models/{model}:predict"
# The series the tests below read, each with the least value it must reach. Waiting for these
# exact series (not just their names, which earlier tests may already have exported) is what
# makes the scrape see this module's own traffic.
WANTED: list[Want] = [
    ("ray_vision_maas_requests_total", {"model": "digits_cnn", "route": PREDICT, "status": "200"}, 5),
    ("ray_vision_maas_requests_total", {"model": "unknown", "route": PREDICT, "status": "404"}, 1),
    ("ray_vision_maas_rejected_inputs_total", {"model": "digits_cnn", "reason": "invalid_image"}, 1),
    ("ray_vision_maas_rejected_inputs_total", {"model": "digits_cnn", "reason": "unsupported_media_type"}, 1),
    ("ray_vision_maas_request_latency_ms_count", {"model": "digits_cnn", "route": PREDICT}, 5),
    ("ray_vision_maas_batch_size_count", {"model": "digits_cnn"}, 5),
    ("ray_vision_maas_queue_wait_ms_count", {"model": "digits_cnn"}, 5),
    ("ray_vision_maas_preprocess_ms_count", {"model": "digits_cnn"}, 5),
    ("ray_vision_maas_batch_execution_ms_count", {"model": "digits_cnn"}, 5),
    ("ray_vision_maas_model_load_seconds", {"model": "digits_cnn"}, 1e-9),
    ("ray_vision_maas_ongoing_requests", {"model": "digits_cnn"}, 0),
]


def scrape_until(
    client: httpx.Client, wanted: list[Want], png: bytes, timeout_s: float = 180.0
) -> list[tuple[str, dict[str, str], float]]:
    """Scrape /metrics until every wanted series reaches its value (Ray exports every few seconds).

    Each round sends one more prediction, so the replica keeps recording while the export catches up.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get("/metrics")
        assert response.status_code == 200, response.text
        found = samples(response.text)
        if all(present(found, *want) for want in wanted) or time.monotonic() > deadline:
            return found
        client.post("/v1/models/digits_cnn:predict", content=png, headers={"Content-Type": "image/png"})
        time.sleep(2.0)


def present(found: list[tuple[str, dict[str, str], float]], name: str, labels: dict[str, str], least: float) -> bool:
    """Whether the series `name{labels}` was exported with a value of at least `least`."""
    matching = [v for n, ls, v in found if n == name and all(ls.get(k) == want for k, want in labels.items())]
    return bool(matching) and sum(matching) >= least


@pytest.fixture(scope="module")
def scraped(base_url: str, digit_pngs: list[tuple[bytes, int]]) -> list[tuple[str, dict[str, str], float]]:
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        return _traffic_then_scrape(client, digit_pngs)


def _traffic_then_scrape(
    client: httpx.Client, digit_pngs: list[tuple[bytes, int]]
) -> list[tuple[str, dict[str, str], float]]:
    for png, _ in digit_pngs[:5]:
        assert (
            client.post("/v1/models/digits_cnn:predict", content=png, headers={"Content-Type": "image/png"}).status_code
            == 200
        )
    # One input of each rejection reason: PNG magic then damage (400), bytes of no image format (415).
    corrupt = client.post(
        "/v1/models/digits_cnn:predict", content=digit_pngs[0][0][:100], headers={"Content-Type": "image/png"}
    )
    assert (corrupt.status_code, corrupt.json()["error"]["code"]) == (400, "invalid_image")
    foreign = client.post(
        "/v1/models/digits_cnn:predict", content=b"not an image", headers={"Content-Type": "image/png"}
    )
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert (
        client.post("/v1/models/no_such_model:predict", content=b"x", headers={"Content-Type": "image/png"}).status_code
        == 404
    )
    return scrape_until(client, WANTED, digit_pngs[0][0])


def value(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, ls, v in found if n == name and all(ls.get(k) == want for k, want in labels.items()))


def test_metrics_count_requests_by_model_route_and_status(scraped: list[tuple[str, dict[str, str], float]]) -> None:
    assert value(scraped, "ray_vision_maas_requests_total", model="digits_cnn", route=PREDICT, status="200") >= 5
    assert value(scraped, "ray_vision_maas_requests_total", model="unknown", route=PREDICT, status="404") >= 1
    assert value(scraped, "ray_vision_maas_request_latency_ms_count", model="digits_cnn", route=PREDICT) >= 5


def test_metrics_count_rejected_inputs_by_reason(scraped: list[tuple[str, dict[str, str], float]]) -> None:
    name = "ray_vision_maas_rejected_inputs_total"
    assert value(scraped, name, model="digits_cnn", reason="invalid_image") >= 1
    assert value(scraped, name, model="digits_cnn", reason="unsupported_media_type") >= 1
    assert value(scraped, "ray_vision_maas_requests_total", model="digits_cnn", route=PREDICT, status="400") >= 1
    assert value(scraped, "ray_vision_maas_requests_total", model="digits_cnn", route=PREDICT, status="415") >= 1


def test_metrics_show_batching_queue_wait_and_load_time_per_model(
    scraped: list[tuple[str, dict[str, str], float]],
) -> None:
    for name in (
        "ray_vision_maas_batch_size_count",
        "ray_vision_maas_queue_wait_ms_count",
        "ray_vision_maas_preprocess_ms_count",
        "ray_vision_maas_batch_execution_ms_count",
    ):
        assert value(scraped, name, model="digits_cnn") >= 5, name
    assert value(scraped, "ray_vision_maas_model_load_seconds", model="digits_cnn") > 0
    assert any(n == "ray_vision_maas_ongoing_requests" for n, _, _ in scraped)


def test_every_dashboard_query_names_an_exported_metric(scraped: list[tuple[str, dict[str, str], float]]) -> None:
    exported = {name for name, _, _ in scraped}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries.append(dashboard["templating"]["list"][1]["query"]["query"])
    assert len(queries) >= 12
    for query in queries:
        # Metric names: identifiers outside braces and strings that are not PromQL words.
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", query)
        names = {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w.startswith("ray_")}
        assert names, query
        for name in names - GPU_ONLY:
            assert name in exported, f"{name} (in {query!r}) is not exported"


def test_request_id_is_honoured_and_returned(client: httpx.Client, digit_pngs: list[tuple[bytes, int]]) -> None:
    mine = f"test-{uuid.uuid4()}"
    response = client.post(
        "/v1/models/digits_cnn:predict",
        content=digit_pngs[0][0],
        headers={"Content-Type": "image/png", "X-Request-ID": mine},
    )
    assert response.headers["x-request-id"] == mine
    generated = client.get("/healthz").headers["x-request-id"]
    assert generated
    assert generated != client.get("/healthz").headers["x-request-id"]


LogRecord = dict[str, Any]


def session_logs() -> Path:
    """The log directory of this test session's Ray cluster (never another cluster's on the machine)."""
    node = ray._private.worker._global_node
    assert node is not None, "Ray is not initialised: the `cluster` fixture starts it"
    return Path(node.get_session_dir_path()) / "logs"


def serve_log_lines(
    request_id: str, done: Callable[[list[LogRecord]], bool], timeout_s: float = 30.0
) -> tuple[list[str], list[LogRecord]]:
    """The JSON lines of this cluster's Serve replica logs that hold `request_id` (raw and parsed),
    once `done` holds for them or `timeout_s` has passed (Serve flushes its log files every line)."""
    logs = session_logs() / "serve"
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [
            line
            for path in logs.glob("replica_*.log")
            for line in path.read_text(errors="replace").splitlines()
            if request_id in line
        ]
        records = [json.loads(line) for line in lines]
        if done(records) or time.monotonic() > deadline:
            return lines, records
        time.sleep(1.0)


def access_records(records: list[LogRecord], path: str = PREDICT) -> list[LogRecord]:
    """The ingress's access lines among `records` for the route template `path`."""
    return [r for r in records if r.get("path") == path and "method" in r]


def test_logs_are_structured_with_request_id_model_and_status_and_no_image_bytes(
    client: httpx.Client, digit_pngs: list[tuple[bytes, int]]
) -> None:
    request_id = f"log-{uuid.uuid4()}"
    response = client.post(
        "/v1/models/digits_cnn:predict",
        content=digit_pngs[0][0],
        params={"top_k": 7},
        headers={"Content-Type": "image/png", "X-Request-ID": request_id, "Authorization": "Bearer secret-key-value"},
    )
    assert response.status_code == 200

    def model_side(records: list[LogRecord]) -> list[LogRecord]:
        return [r for r in records if r.get("call") == "predict"]

    lines, records = serve_log_lines(request_id, lambda rs: bool(access_records(rs) and model_side(rs)))
    for line in lines:
        assert "secret-key-value" not in line
        assert "iVBOR" not in line  # no image bytes, base64 or raw
        assert "PNG" not in line
        assert "top_k" not in line  # no parameters
    access = access_records(records)
    assert len(access) == 1, records
    line = access[0]
    assert (line["method"], line["status"], line["model"], line["error"]) == ("POST", 200, "digits_cnn", None)
    assert line["request_id"] == request_id
    assert line["latency_ms"] > 0
    calls = model_side(records)
    assert len(calls) == 1, records
    call = calls[0]
    assert (call["model"], call["items"], call["outcome"]) == ("digits_cnn", 1, "ok")
    assert len(call["batch_sizes"]) == 1
    assert call["batch_sizes"][0] >= 1
    assert call["preprocess_ms"] >= 0
    assert call["latency_ms"] > 0
