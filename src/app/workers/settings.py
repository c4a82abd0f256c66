"""`arq app.workers.WorkerSettings`: the background worker (`--check` asks for its last health check)."""

from __future__ import annotations

from typing import Any, ClassVar

from arq import cron, func
from arq.connections import RedisSettings

from app.config import get_settings
from app.lib.jobs import deserialize_job, queue_name, serialize_job
from app.workers.cache import expire_cache, warm_cache
from app.workers.context import shutdown, startup
from app.workers.conversations import reconcile_conversation
from app.workers.sending import send_message, sweep_pending_outbound


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        func(reconcile_conversation, timeout=60, max_tries=3),
        # timeout > the HTTP client's 10 s, so a hung gateway fails the call, not the job
        func(send_message, timeout=30, max_tries=6),
        func(warm_cache, timeout=120, max_tries=1),
    ]
    queue_name = queue_name(get_settings().redis.key_prefix)
    # Cron job ids are `{name}:{time}` and global to the Redis: the queue in the name keeps deployments
    # sharing one Redis from deduplicating each other's runs.
    cron_jobs: ClassVar[list[Any]] = [
        cron(sweep_pending_outbound, name=f"cron:{queue_name}:sweep", second={0, 30}, timeout=30),
        cron(warm_cache, name=f"cron:{queue_name}:warm", minute=set(range(0, 60, 5)), second=15, timeout=120),
        cron(
            expire_cache,
            name=f"cron:{queue_name}:expire",
            minute=set(range(2, 60, 10)),
            second=45,
            timeout=120,
        ),
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(get_settings().redis.url)
    health_check_interval = 30
    job_serializer = serialize_job
    job_deserializer = deserialize_job
