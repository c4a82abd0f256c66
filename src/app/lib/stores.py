"""Stores that keep working when Redis does not (Redis is an accelerator, not a dependency of correctness)."""

from __future__ import annotations

from datetime import timedelta

import structlog
from litestar.stores.redis import RedisStore
from redis.exceptions import RedisError

log = structlog.get_logger()


class FailOpenRedisStore(RedisStore):
    """A RedisStore whose reads miss and writes are skipped while Redis is unreachable.

    Used for the login rate limit: with Redis down, agents can still log in (unthrottled, logged)
    instead of every login failing with a 500.
    """

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        try:
            return await super().get(key, renew_for)
        except (RedisError, OSError) as exc:
            self._log_unavailable(exc)
            return None

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        try:
            await super().set(key, value, expires_in)
        except (RedisError, OSError) as exc:
            self._log_unavailable(exc)

    def _log_unavailable(self, exc: BaseException) -> None:
        log.warning(
            "redis store unavailable; failing open", namespace=self.namespace, error=type(exc).__name__
        )
