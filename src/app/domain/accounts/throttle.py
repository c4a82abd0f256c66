"""The login throttle: attempts per client address per minute, every attempt counted (right or wrong
password), shared by every API process through Redis (`app.lib.throttle`). Fails open: with Redis down,
agents can still log in."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from redis.asyncio import Redis

from app.lib.throttle import ClientThrottle, client_address


class LoginThrottle:
    def __init__(self, redis: Redis, key_prefix: str, per_minute: int) -> None:
        self._budget = ClientThrottle(
            redis, f"{key_prefix}:login-attempts", per_minute, "too many login attempts; try again later"
        )

    async def check(self, client: str) -> None:
        self._budget.refuse_if_over(await self._budget.count(client))


async def throttle_logins(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard for the login route."""
    throttle: LoginThrottle = connection.app.state.login_throttle
    await throttle.check(client_address(connection))
