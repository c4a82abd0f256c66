"""Prometheus metrics: what operators scrape. Label values are bounded (gateway names, outcomes, layers,
route templates), never ids.

The API serves `/metrics` (Litestar's Prometheus plugin) only when METRICS_TOKEN is set, and only to
`Authorization: Bearer <METRICS_TOKEN>`. With several API processes on a host, set PROMETHEUS_MULTIPROC_DIR
(an empty directory per deployment, as prometheus-client requires): every process, the workers included,
writes there and any API process's /metrics reports them all. A worker on another host serves its own on
WORKER_METRICS_PORT (loopback unless WORKER_METRICS_HOST says otherwise).
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.lib.errors import problem

WEBHOOKS = Counter("crm_webhooks_total", "Webhooks committed", ["gateway"])
MESSAGES_PERSISTED = Counter("crm_messages_persisted_total", "Messages stored by ingest", ["gateway"])
DUPLICATES = Counter("crm_duplicates_ignored_total", "Gateway redeliveries ignored", ["gateway"])
INGEST_SECONDS = Histogram(
    "crm_ingest_transaction_seconds",
    "Webhook transaction time, from parse to commit",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CACHE_LOOKUPS = Counter("crm_cache_lookups_total", "Read cache lookups", ["layer", "result"])
WS_FRAMES = Counter("crm_websocket_frames_sent_total", "Frames written to WebSockets")
WS_CONNECTIONS = Gauge("crm_websocket_connections", "Open WebSockets", multiprocess_mode="livesum")
HTTP_SLOW_CLIENTS = Counter(
    "crm_http_slow_clients_total", "Connections closed for a request head or body too slow", ["phase"]
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "crm_http_connections_refused_total", "Connections refused at HTTP_MAX_CONNECTIONS (503)"
)
WS_SOCKETS_REFUSED = Counter(
    "crm_websocket_refused_total", "WebSockets refused for being over WS_MAX_SOCKETS_PER_AGENT (4429)"
)
JOBS = Counter("crm_jobs_total", "Worker jobs finished", ["function", "outcome"])

MEMORY_HIT = CACHE_LOOKUPS.labels("memory", "hit")
REDIS_HIT = CACHE_LOOKUPS.labels("redis", "hit")
POSTGRES_LOAD = CACHE_LOOKUPS.labels("postgres", "load")


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(
        app_name="whatsapp_crm",
        prefix="crm_http",
        group_path=True,  # label by route template, not by the ids in the path
        exclude=["^/metrics$", "^/health$", "^/ready$", "^/ws$"],
    )


def scrape() -> bytes:
    """The text exposition of this process, or of every process sharing PROMETHEUS_MULTIPROC_DIR."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def metrics_route(token: str | None) -> HTTPRouteHandler:
    @get("/metrics", include_in_schema=False, opt={"skip_auth": True}, sync_to_thread=False)
    def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        # Its own bearer token, not an agent's JWT: scrapers are not people.
        if not token:
            raise problem(404, "metrics are disabled (set METRICS_TOKEN)")
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            raise problem(401, "a valid metrics token is required")
        return Response(scrape(), media_type=CONTENT_TYPE_LATEST)

    return metrics
