"""Background jobs. `arq app.workers.WorkerSettings` and `arq app.workers.MediaWorkerSettings` run them.

WorkerSettings is loaded on first access: it reads the environment's settings, and API code importing
small helpers from this package (e.g. job ids) must not need a worker's configuration.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in {"WorkerSettings", "MediaWorkerSettings"}:
        from app.workers import settings

        return getattr(settings, name)
    raise AttributeError(name)
