"""`arq app.workers.settings.WorkerSettings`: the background worker."""

from __future__ import annotations

from typing import Any, ClassVar

from arq import cron, func
from arq.connections import RedisSettings

from app.config import get_settings
from app.lib.jobs import deserialize_job, queue_name, serialize_job
from app.workers.context import shutdown, startup
from app.workers.conversations import reconcile_conversation
from app.workers.sending import send_message, sweep_pending_outbound


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        func(reconcile_conversation, timeout=60, max_tries=3),
        # timeout > the HTTP client's 10 s, so a hung gateway fails the call, not the job
        func(send_message, timeout=30, max_tries=6),
    ]
    cron_jobs: ClassVar[list[Any]] = [cron(sweep_pending_outbound, second={0, 30}, unique=True, timeout=30)]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(get_settings().redis.url)
    queue_name = queue_name(get_settings().redis.key_prefix)
    health_check_interval = 30
    job_serializer = serialize_job
    job_deserializer = deserialize_job
