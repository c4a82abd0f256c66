"""Prometheus metrics: what operators scrape, and the one count of each thing both /metrics and /stats show.
Label values are bounded (gateway names, outcomes, layers, route templates), never ids.

`/metrics` is Litestar's own `PrometheusController`, served only when METRICS_TOKEN is set and only to
`Authorization: Bearer <METRICS_TOKEN>` (a guard; scrapers are not agents, so no JWT). With several API
processes on a host, set PROMETHEUS_MULTIPROC_DIR (an empty directory per deployment, as prometheus-client
requires): every process, the workers included, writes there and any API process's /metrics reports them
all. A worker on another host serves its own on WORKER_METRICS_PORT (loopback unless WORKER_METRICS_HOST
says otherwise).

One set of counters (issue 14): a thing this module counts is counted here only, and /stats reads this
process's value from the counter (`values`) instead of keeping a copy — webhooks, messages persisted and
duplicates per gateway (`app.domain.stats.ingest`), WebSocket frames sent (`app.domain.stats.process`).
Measured on this machine (prometheus-client 0.26, CPython 3.11, `timeit`, best of 5 runs of 1M): a plain int
attribute `+= 1` costs 15 ns, `Counter.labels(...)` child `.inc()` 221 ns (646 ns with
PROMETHEUS_MULTIPROC_DIR, an mmap write under a lock), `.labels(x).inc()` 863 / 1,341 ns. The copies were the
cheap half: dropping them saves 15 ns per event; dropping the Prometheus side instead would save more but
lose what only it does, summing every process of a host (a custom collector's values are not aggregated in
multi-process mode). Reading one counter back for /stats costs a few microseconds, every 5 s.
Not merged: the page cache's per-layer figures (`app.domain.conversations.cache`) stay per cache object —
a worker's cache and an API's in one process report apart and `warm_cache` reports its own loads, which a
process-wide counter cannot — and its hit ratios need hits and misses from one source; the three lookups
exported here are counted at the same lines.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.types import Guard
from prometheus_client import Counter, Gauge, Histogram

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


def values(counter: Counter) -> dict[tuple[str, ...], float]:
    """This process's count of each label set (label values in the counter's order), from the registry's
    own figures: the public `collect()`, which in multi-process mode too reads this process's values."""
    found: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                found[tuple(sample.labels.values())] = sample.value
    return found


def total(counter: Counter) -> int:
    """This process's count over every label set."""
    return int(sum(values(counter).values()))


def metrics_token_guard(token: str | None) -> Guard:
    """Its own bearer token, not an agent's JWT: scrapers are not people. Unset: the route is disabled."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not token:
            raise problem(404, "metrics are disabled (set METRICS_TOKEN)")
        supplied = connection.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            raise problem(401, "a valid metrics token is required")

    return guard


def metrics_route(token: str | None) -> type[PrometheusController]:
    """`GET /metrics`: Litestar's PrometheusController (the text exposition, of every process sharing
    PROMETHEUS_MULTIPROC_DIR when set) behind the token guard."""

    class GuardedPrometheusController(PrometheusController):
        guards = [metrics_token_guard(token)]
        opt = {"skip_auth": True}  # the JWT middleware leaves it to the guard
        include_in_schema = False

    return GuardedPrometheusController
