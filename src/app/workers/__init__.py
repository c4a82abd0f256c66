"""Background jobs. `arq app.workers.WorkerSettings` runs them.

WorkerSettings is loaded on first access: it reads the environment's settings, and API code importing
small helpers from this package (e.g. job ids) must not need a worker's configuration.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from app.workers.settings import WorkerSettings

        return WorkerSettings
    raise AttributeError(name)
