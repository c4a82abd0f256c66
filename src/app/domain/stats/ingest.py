"""Webhook ingest figures of this process: counts, and the transaction time over a recent window."""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class IngestCounters:
    persisted: int = 0
    duplicates: int = 0
    statuses: int = 0
    webhooks: Counter[str] = field(default_factory=Counter)  # per gateway
    # The most recent webhook transactions' durations (seconds): p50/p99 over a window, bounded memory.
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def record(self, gateway: str, *, persisted: int, duplicates: int, statuses: int, seconds: float) -> None:
        self.persisted += persisted
        self.duplicates += duplicates
        self.statuses += statuses
        self.webhooks[gateway] += 1
        self.durations.append(seconds)

    def describe(self) -> dict[str, Any]:
        return {
            "webhooks": sum(self.webhooks.values()),
            "messages_persisted": self.persisted,
            "duplicates_ignored": self.duplicates,
            "status_updates": self.statuses,
            "per_gateway": dict(self.webhooks),
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
