"""`arq app.workers.settings.WorkerSettings`: the background worker."""

from __future__ import annotations

from typing import Any, ClassVar

from arq import func
from arq.connections import RedisSettings

from app.config import get_settings
from app.workers.context import shutdown, startup
from app.workers.conversations import reconcile_conversation


class WorkerSettings:
    functions: ClassVar[list[Any]] = [func(reconcile_conversation, timeout=60, max_tries=3)]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(get_settings().redis.url)
    health_check_interval = 30
    job_serializer = None
