"""The workers' Redis connection waits out a Redis outage instead of ending the worker.

arq retries connecting only at start (`conn_retries`); once it runs, the first connection error of its poll
loop ends `Worker.main` and the process exits (python-arq/arq#435, #498: the maintainers leave restarting it
to a supervisor). A Redis restart used to take both workers down with it, and /ready stayed 503 until
something restarted them. Here every command of the worker's arq pool that fails for want of a connection
(refused, reset, connect timeout) is tried again with a capped backoff, for as long as the worker runs: the
poll loop resumes when Redis is back and the next heartbeat writes the health check again.

Only while the worker runs, from its startup hook on: once its poll loop is over (SIGTERM, or an error of
another kind) a failure is final, so a worker stopped during an outage exits at once (1, its health check
not deleted) instead of waiting for Redis until it is killed. Before the hook arq's own `conn_retries` apply,
as they do to `arq --check`. The jobs' own Redis client (the publisher) does not wait: a job must not hang
on a lost publish.

One window stays: a connection lost between WATCH and EXEC while arq claims a job is a WatchError where arq
does not expect one, and ends the worker; that takes Redis dying in those two round trips, and a supervisor
restarts the worker as it would without this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from arq.connections import RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

log = structlog.get_logger()
T = TypeVar("T")

# 0.1, 0.2, 0.4, 0.8, then every 1 s: back within a second of Redis, without hammering it meanwhile.
_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
# A refused or timed-out connect reaches the retry as the bare OSError (redis-py turns it into its own
# ConnectionError only outside the retry, which is why a Retry of redis' errors alone does not help, arq#498);
# redis' TimeoutError can only come from connecting too, as arq sets no socket timeout for commands.
_LOST = (ConnectionError, TimeoutError, OSError)


class _Running:
    """The worker's poll loop: arq's main task, which runs the startup hook (set there)."""

    task: asyncio.Task[Any] | None = None


def mark_worker_running() -> None:
    """Called from the worker's startup hook, which arq awaits inside its main task."""
    _Running.task = asyncio.current_task()


def _worker_running() -> bool:
    # Not yet running: arq's first PING (and `arq --check`, which runs no worker) must fail, not hang.
    return _Running.task is not None and not _Running.task.done()


class WhileWorkerRuns(Retry):
    """A redis-py Retry that retries forever while the worker runs, and not at all once it stops.

    redis-py deep-copies it into each connection; the state it reads is the process's, not the copy's."""

    def __init__(self) -> None:
        super().__init__(_BACKOFF, retries=-1)  # the loop below decides what it retries: _LOST

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[Any], Any]) -> T:
        failures = 0
        while True:
            try:
                return await do()
            except _LOST as error:
                failures += 1
                await fail(error)  # drops the broken connection (and re-raises what is not retryable)
                if not _worker_running():
                    raise
                if failures == 1:
                    log.warning("redis unavailable; retrying until it is back", error=str(error))
                await asyncio.sleep(_BACKOFF.compute(failures))


def worker_redis_settings(redis_url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(redis_url)
    settings.retry = WhileWorkerRuns()
    settings.retry_on_error = list(_LOST)
    return settings
