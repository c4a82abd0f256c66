"""Enqueueing arq jobs from the API, after commit, without making Redis a dependency of the request.

`ArqPlugin` puts one `JobQueue` in the app: opened at startup, closed at shutdown, injected as `jobs`.
The pool is re-opened after a failure, and opening it at startup is best effort: an API process starts,
and answers, with Redis down. A job that could not be enqueued is not lost: the worker's sweep finds its
row and enqueues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from typing import Any
from uuid import UUID

import msgspec
import structlog
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPluginProtocol
from redis.exceptions import RedisError

log = structlog.get_logger()

_ENQUEUE_TIMEOUT_S = 1.0


def queue_name(key_prefix: str) -> str:
    """The arq queue of this deployment (several can share one Redis, see REDIS_KEY_PREFIX)."""
    return f"{key_prefix}:queue"


def media_queue_name(key_prefix: str) -> str:
    """Media jobs have a queue (and worker) of their own: a slow download never delays a send."""
    return f"{key_prefix}:media"


# The jobs the API and the workers enqueue, by the names arq knows them by (app.workers registers them),
# and their ids: every writer that hands work on after its commit names it here (issue 13).
SEND_MESSAGE = "send_message"
PROCESS_MEDIA = "process_media"
WARM_CACHE = "warm_cache"


def media_job_id(media_id: UUID) -> str:
    """One process_media job per media while it or its result lives in Redis (the row decides the rest)."""
    return f"{PROCESS_MEDIA}:{media_id}"


def send_job_id(message_id: UUID) -> str:
    """One send_message job per outbound message while it or its result lives in Redis."""
    return f"{SEND_MESSAGE}:{message_id}"


def _exception_as_text(value: Any) -> str:
    """A failed job's result is its exception, which msgpack cannot encode: arq then stored no result at
    all (issue 14: `Encoding objects of type ProgrammingError is unsupported`). Stored as its text (type
    and message); arq's `Job.result()` raises it back as a SerializationError carrying that text."""
    if isinstance(value, BaseException):
        return "".join(traceback.format_exception_only(value)).strip()
    raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")  # still a bug


def serialize_job(data: dict[str, Any]) -> bytes:
    return msgspec.msgpack.encode(data, enc_hook=_exception_as_text)


def deserialize_job(data: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.msgpack.decode(data)
    return decoded


class JobQueue:
    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self._settings = RedisSettings.from_dsn(redis_url)
        self._settings.conn_retries = 0  # fail fast; the sweep is the retry
        self.queue_name = queue_name(key_prefix)
        self.media_queue_name = media_queue_name(key_prefix)
        self._pool: ArqRedis | None = None

    async def _open(self) -> ArqRedis:
        if self._pool is None:
            self._pool = await create_pool(
                self._settings,
                job_serializer=serialize_job,
                job_deserializer=deserialize_job,
                default_queue_name=self.queue_name,
            )
        return self._pool

    async def open(self) -> None:
        """Connect now if Redis answers; otherwise the first enqueue tries again."""
        try:
            async with asyncio.timeout(_ENQUEUE_TIMEOUT_S):
                await self._open()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("job queue not connected at startup", error=type(exc).__name__)

    async def enqueue(self, function: str, *args: Any, job_id: str, queue: str | None = None) -> bool:
        """Enqueue once per job_id (arq dedupes while the job or its result lives); False if Redis is down."""
        try:
            async with asyncio.timeout(_ENQUEUE_TIMEOUT_S):
                pool = await self._open()
                await pool.enqueue_job(function, *args, _job_id=job_id, _queue_name=queue or self.queue_name)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("job not enqueued; the sweep will pick it up", job=function, error=type(exc).__name__)
            await self.close()
            return False
        return True

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(RedisError, OSError):
                await pool.aclose()


class ArqPlugin(InitPluginProtocol):
    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.dependencies["jobs"] = Provide(lambda: self.queue, use_cache=True, sync_to_thread=False)
        app_config.on_startup.append(self.queue.open)
        app_config.on_shutdown.append(self.queue.close)
        return app_config
