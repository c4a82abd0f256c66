"""Webhook ingest figures of this process for /stats: the counts Prometheus already holds, read from its
counters (one set of counters, issue 14: `app.lib.metrics`), plus what it does not — status updates, and the
transaction time's p50/p99 over a recent window (its histogram's buckets only bound a quantile; this keeps the
last 4,096 durations, bounded memory)."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from app.lib import metrics


@dataclass
class IngestCounters:
    statuses: int = 0
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=4096))  # seconds

    def observe(self, *, statuses: int, seconds: float) -> None:
        self.statuses += statuses
        self.durations.append(seconds)

    def describe(self) -> dict[str, Any]:
        per_gateway = {labels[0]: int(count) for labels, count in metrics.values(metrics.WEBHOOKS).items()}
        return {
            "webhooks": sum(per_gateway.values()),
            "messages_persisted": metrics.total(metrics.MESSAGES_PERSISTED),
            "duplicates_ignored": metrics.total(metrics.DUPLICATES),
            "status_updates": self.statuses,
            "per_gateway": per_gateway,
            "transaction_ms": _percentiles(self.durations),
        }


def _percentiles(samples: deque[float]) -> dict[str, float | int | None]:
    if len(samples) < 2:
        only = round(samples[0] * 1000, 2) if samples else None
        return {"samples": len(samples), "p50": only, "p99": only}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"samples": len(samples), "p50": round(cuts[49] * 1000, 2), "p99": round(cuts[98] * 1000, 2)}


# One per process: the webhook service records into it, the snapshot reads it.
INGEST = IngestCounters()
