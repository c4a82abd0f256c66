"""The background workers (`--check` asks for a worker's last health check):

`arq app.workers.WorkerSettings` — sends, cache upkeep, maintenance: short jobs.
`arq app.workers.MediaWorkerSettings` — media downloads and processing on a queue of their own, so a slow
gateway or a large video never delays a send (and arq's wait for the longest timeout after a crash, arq #402,
only holds back media).
"""

from __future__ import annotations

from typing import Any, ClassVar

from arq import cron, func

from app.config import get_settings
from app.lib.jobs import deserialize_job, media_queue_name, queue_name, serialize_job
from app.lib.logging import bind_job
from app.workers.cache import expire_cache, warm_cache
from app.workers.context import shutdown, startup, startup_media
from app.workers.conversations import reconcile_conversation
from app.workers.media import process_media, sweep_pending_media
from app.workers.redis_retry import worker_redis_settings
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
    on_job_start = bind_job
    redis_settings = worker_redis_settings(get_settings().redis.url)  # waits out a Redis outage
    health_check_interval = get_settings().workers.health_check_s
    job_serializer = serialize_job
    job_deserializer = deserialize_job


class MediaWorkerSettings:
    # No result kept: arq refuses a job id while its result lives, and the sweep must be able to enqueue
    # the same media again once a claim's lease has run out.
    functions: ClassVar[list[Any]] = [func(process_media, timeout=120, max_tries=8, keep_result=0)]
    queue_name = media_queue_name(get_settings().redis.key_prefix)
    cron_jobs: ClassVar[list[Any]] = [
        cron(sweep_pending_media, name=f"cron:{queue_name}:sweep", second=20, timeout=60),
    ]
    max_jobs = get_settings().media.concurrency
    on_startup = startup_media
    on_shutdown = shutdown
    on_job_start = bind_job
    redis_settings = worker_redis_settings(get_settings().redis.url)  # waits out a Redis outage
    health_check_interval = get_settings().workers.health_check_s
    job_serializer = serialize_job
    job_deserializer = deserialize_job
