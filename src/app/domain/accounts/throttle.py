"""The login throttle: attempts per client address per minute, counted atomically in Redis so every API
process shares one budget (Litestar's rate-limit middleware reads and rewrites a history per request, and
concurrent processes overwrite each other's counts). Fails open: with Redis down, agents can still log in."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger()

_WINDOW_S = 60
# INCR and EXPIRE together: the first attempt of a window sets its lifetime, and nothing can interleave.
_COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class LoginThrottle:
    def __init__(self, redis: Redis, key_prefix: str, per_minute: int) -> None:
        self._count = redis.register_script(_COUNT)
        self._root = f"{key_prefix}:login-attempts"
        self.per_minute = per_minute

    async def check(self, client: str) -> None:
        window = int(time.time()) // _WINDOW_S
        reset = (window + 1) * _WINDOW_S - int(time.time())
        try:
            async with asyncio.timeout(0.5):
                count = int(await self._count(keys=[f"{self._root}:{client}:{window}"], args=[_WINDOW_S * 2]))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("login throttle unavailable; not limiting", error=type(exc).__name__)
            return
        if count > self.per_minute:
            raise TooManyRequestsException(
                "too many login attempts; try again later",
                headers={
                    "RateLimit-Limit": str(self.per_minute),
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(reset),
                    "Retry-After": str(reset),
                },
            )


async def throttle_logins(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard for the login route."""
    throttle: LoginThrottle = connection.app.state.login_throttle
    await throttle.check(connection.client.host if connection.client else "unknown")
