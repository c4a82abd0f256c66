"""Budgets per client address, counted atomically in Redis so every API process shares one count (Litestar's
rate-limit middleware reads and rewrites a history per request, and concurrent processes overwrite each
other's counts). The login throttle and the webhook authentication throttle are both built on this.

A window opens with the first counted event of an address and lasts a minute; once `per_minute` events
are counted, the address is refused until the window's key expires (Retry-After says when). Fails open:
with Redis down nothing is refused, so agents can log in and gateways deliver while Redis recovers. A hung
Redis costs one short timeout, after which the throttle stops asking for a few seconds: every webhook
passes through here before its commit, and must not wait on Redis each time.

The address is the ASGI scope's client, which uvicorn (`proxy_headers`) rewrites from X-Forwarded-For only
when the connection comes from FORWARDED_ALLOW_IPS: anyone else cannot pick the address they are counted as.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger()

WINDOW_S = 60
_REDIS_TIMEOUT_S = 0.1  # a healthy Redis answers in well under a millisecond
_REST_AFTER_FAILURE_S = 5.0
# INCR and EXPIRE together: the first event of a window sets its lifetime, and nothing can interleave. A key
# without a lifetime (never left by this script) gets one too, rather than refusing its address for good.
_COUNT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""
_PEEK = """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('TTL', KEYS[1])}
"""


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The address a request is counted as (see the module docstring for who may set it)."""
    return connection.client.host if connection.client else "unknown"


@dataclass(frozen=True, slots=True)
class Window:
    count: int  # events counted in the address's current window
    resets_in_s: int  # until the window closes


class ClientThrottle:
    def __init__(self, redis: Redis, root: str, per_minute: int, refusal: str) -> None:
        self._count = redis.register_script(_COUNT)
        self._peek = redis.register_script(_PEEK)
        self._root = root  # the Redis key prefix of this budget, e.g. "crm:login-attempts"
        self.per_minute = per_minute
        self._refusal = refusal  # the 429's detail
        self._rest_until = 0.0  # monotonic time until which Redis is not asked (it just failed)

    async def count(self, client: str) -> Window | None:
        """Count one event of `client`; None when Redis cannot answer (fail open)."""
        return await self._run(self._count, client, [WINDOW_S])

    async def current(self, client: str) -> Window | None:
        """The client's window without counting anything; None when Redis cannot answer (fail open)."""
        return await self._run(self._peek, client, [])

    def refuse_if_over(self, window: Window | None) -> None:
        """After `count`: refuse the event that went past the budget (and every one after it)."""
        if window is not None and window.count > self.per_minute:
            raise self._refused(window)

    def refuse_if_spent(self, window: Window | None) -> None:
        """After `current`: refuse once the budget is used up (the request at hand was not counted)."""
        if window is not None and window.count >= self.per_minute:
            raise self._refused(window)

    def _refused(self, window: Window) -> TooManyRequestsException:
        reset = str(max(window.resets_in_s, 1))
        return TooManyRequestsException(
            self._refusal,
            headers={
                "RateLimit-Limit": str(self.per_minute),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": reset,
                "Retry-After": reset,
            },
        )

    async def _run(self, script: Any, client: str, args: list[int]) -> Window | None:
        if time.monotonic() < self._rest_until:
            return None
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                count, ttl = await script(keys=[f"{self._root}:{client}"], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._rest_until = time.monotonic() + _REST_AFTER_FAILURE_S
            log.warning(
                "throttle unavailable; not limiting",
                throttle=self._root,
                error=type(exc).__name__,
                retry_in_s=_REST_AFTER_FAILURE_S,
            )
            return None
        # TTL is -2 for a key that is gone (nothing counted).
        return Window(count=int(count), resets_in_s=max(int(ttl), 0))
