"""How the throttles ask Redis: time Redis, not this process's event loop (issue 12, finding 1a).

A throttle call used to get 100 ms measured on the API's own event loop, and one timeout turned the
throttle off for 5 s. During a login flood the loop itself is late — hundreds of requests are parsed between
two turns of a coroutine — so Redis's answer sat unread past the deadline, and the flood switched off the
very throttle meant to stop it ("throttle unavailable; not limiting", logged hundreds of times).

Now a call that has not answered after `PATIENCE_S` on the loop is judged by a probe that does not run on
the loop: a PING from a worker thread with a blocking socket whose timeout the kernel keeps (`PROBE_S`),
shared by every call waiting at that moment. If Redis answers the probe promptly, only the loop was slow:
the call keeps waiting, up to a generous `DEADLINE_S`, and nothing is switched off. If the probe fails or
is slow, Redis itself is frozen or overloaded: the call gives up (the throttle fails open) and throttles stop
asking Redis for `REST_S`, so a hung Redis costs each webhook at most `PATIENCE_S + PROBE_S` once, not on
every request. A refused or dropped connection (Redis down) rests at once. The rest is logged once, when
it starts, not per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger()

T = TypeVar("T")

PATIENCE_S = 0.1  # on the loop: after this, ask the probe whether Redis or the loop is slow
PROBE_S = 0.25  # the probe's socket timeout (kernel time): a healthy Redis answers in well under 1 ms
DEADLINE_S = 5.0  # on the loop, once the probe has shown Redis healthy
REST_S = 5.0


class ThrottleCalls:
    """One per process, shared by the throttles (they all ask the same Redis)."""

    def __init__(self, redis_url: str) -> None:
        self._probe_client = redis.Redis.from_url(
            redis_url, socket_timeout=PROBE_S, socket_connect_timeout=PROBE_S
        )
        self._probe: asyncio.Future[bool] | None = None
        self._rest_until = 0.0

    @property
    def resting(self) -> bool:
        return time.monotonic() < self._rest_until

    async def run(self, call: Callable[[], Awaitable[T]], throttle: str) -> T | None:
        """The call's answer, or None when Redis cannot give it (the caller fails open)."""
        if self.resting:
            return None
        pending = asyncio.ensure_future(call())
        try:
            # asyncio.wait, not wait_for(shield(...)): no second task or future per call (issue 13).
            await asyncio.wait((pending,), timeout=PATIENCE_S)
            if pending.done():
                return pending.result()
            if not await self._redis_answers_promptly():
                self._rest(throttle, "Redis answers no probe within its timeout")
                return None
            await asyncio.wait((pending,), timeout=DEADLINE_S - PATIENCE_S)
            if not pending.done():
                raise TimeoutError
            return pending.result()
        except TimeoutError:
            # Redis answered the probe: this process is overloaded. Fail open for this call only.
            log.warning("throttle call outlived its deadline", throttle=throttle, deadline_s=DEADLINE_S)
            return None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._rest(throttle, type(exc).__name__)
            return None
        except RedisError as exc:  # an answer, but an error (a script refused): nothing to rest from
            log.warning("throttle call failed", throttle=throttle, error=type(exc).__name__)
            return None
        finally:
            if not pending.done():
                pending.cancel()

    def _rest(self, throttle: str, reason: str) -> None:
        if not self.resting:
            log.warning(
                "throttle unavailable; not limiting", throttle=throttle, error=reason, retry_in_s=REST_S
            )
        self._rest_until = time.monotonic() + REST_S

    async def _redis_answers_promptly(self) -> bool:
        """One probe at a time, whatever the number of calls waiting on its verdict."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(self._ping_in_kernel_time))
        return await asyncio.shield(self._probe)

    def _ping_in_kernel_time(self) -> bool:
        started = time.monotonic()  # in this thread: the loop's lag is not in it
        try:
            self._probe_client.ping()
        except (RedisError, OSError):
            return False
        return time.monotonic() - started < PROBE_S

    def close(self) -> None:
        self._probe_client.close()  # type: ignore[no-untyped-call]
