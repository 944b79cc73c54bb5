"""Metrics (through Ray's metrics API, so Prometheus scrapes every node) and structured logs.

Ray exports these on each node's metrics port with a `ray_` prefix; locally the ingress also
serves its node's metrics at `/metrics`. Metric objects are created lazily, once per process:
they need a running Ray worker, and deployments import this module at decoration time.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, TypeVar

from ray.serve import metrics

logger = logging.getLogger("ray.serve")

PREFIX = "vision_maas_"
LATENCY_MS_BOUNDARIES = [1.0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]
BATCH_SIZE_BOUNDARIES = [1.0, 2, 4, 8, 16, 32, 64, 128, 256]


def _keys(*names: str) -> Any:
    """Tag keys; Ray annotates them as `Tuple[str]` but takes any number."""
    return names


class IngressMetrics:
    """Per-request metrics recorded by the ingress."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            PREFIX + "requests_total",
            description="HTTP requests by model, route and status.",
            tag_keys=_keys("model", "route", "status"),
        )
        self.latency = metrics.Histogram(
            PREFIX + "request_latency_ms",
            description="End-to-end latency inside the server, by model and route.",
            boundaries=LATENCY_MS_BOUNDARIES,
            tag_keys=_keys("model", "route"),
        )
        self.rejected = metrics.Counter(
            PREFIX + "rejected_inputs_total",
            description="Requests refused for their input (4xx), by model and reason (error code).",
            tag_keys=_keys("model", "reason"),
        )

    def record(self, model: str, route: str, status: int, latency_ms: float, reason: str | None) -> None:
        """Count one finished request."""
        self.requests.inc(tags={"model": model, "route": route, "status": str(status)})
        self.latency.observe(latency_ms, tags={"model": model, "route": route})
        if reason is not None:
            self.rejected.inc(tags={"model": model, "reason": reason})


class ModelMetrics:
    """Per-replica metrics of one model deployment."""

    def __init__(self, model: str, version: str) -> None:
        # By version too: a canary's figures apart from its stable version's (deployments.rollouts).
        tags = {"model": model, "version": version}
        self.queue_wait = _tagged(
            tags,
            metrics.Histogram(
                PREFIX + "queue_wait_ms",
                description="Time an item waited for its batch to start.",
                boundaries=LATENCY_MS_BOUNDARIES,
                tag_keys=_keys("model", "version"),
            ),
        )
        self.preprocess = _tagged(
            tags,
            metrics.Histogram(
                PREFIX + "preprocess_ms",
                description="Decode and preprocess time of one request.",
                boundaries=LATENCY_MS_BOUNDARIES,
                tag_keys=_keys("model", "version"),
            ),
        )
        self.batch_execution = _tagged(
            tags,
            metrics.Histogram(
                PREFIX + "batch_execution_ms",
                description="Forward pass time of one batch.",
                boundaries=LATENCY_MS_BOUNDARIES,
                tag_keys=_keys("model", "version"),
            ),
        )
        self.batch_size = _tagged(
            tags,
            metrics.Histogram(
                PREFIX + "batch_size",
                description="Items per executed batch.",
                boundaries=BATCH_SIZE_BOUNDARIES,
                tag_keys=_keys("model", "version"),
            ),
        )
        self.ongoing = _tagged(
            tags,
            metrics.Gauge(
                PREFIX + "ongoing_requests",
                description="Requests in this replica (decoding, queued or computing).",
                tag_keys=_keys("model", "version"),
            ),
        )
        self.load_seconds = _tagged(
            tags,
            metrics.Gauge(
                PREFIX + "model_load_seconds",
                description="Time the replica took to build the model and load its weights.",
                tag_keys=_keys("model", "version"),
            ),
        )


MetricT = TypeVar("MetricT", bound=metrics.Counter | metrics.Gauge | metrics.Histogram)


def _tagged(tags: dict[str, str], metric: MetricT) -> MetricT:
    """`metric` with default tags; a copy each time, since Serve adds its own tags to the dict."""
    metric.set_default_tags(dict(tags))
    return metric


@functools.cache
def ingress_metrics() -> IngressMetrics:
    """The process's ingress metrics (created on first use, inside a Ray worker)."""
    return IngressMetrics()


def access_log(**fields: Any) -> None:
    """One structured line per request; Serve adds the request id, route and replica.

    Only scalar facts go here: never bodies, image bytes, parameters or credentials.
    """
    logger.info(
        "%s %s %s %.1fms",
        fields.get("method"),
        fields.get("path"),
        fields.get("status"),
        fields.get("latency_ms", 0.0),
        # Serve's log formatter flattens this key's fields into the record (JSON logs).
        extra={"ray_serve_extra_fields": fields},
    )
