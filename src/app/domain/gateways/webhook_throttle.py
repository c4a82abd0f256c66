"""Webhook routes against secret guessing: failed verifications are counted per client address (shared by
every API process, `app.lib.throttle`); an address with WEBHOOK_AUTH_FAILURES_PER_MINUTE of them gets 429
on every webhook route until its minute passes, even with the right secret (else guessing would go on:
the one right guess would still be told apart).

Only failures count: a verified gateway is never throttled, however much it sends (WPPConnect never
retries, so a 429 to it would lose messages). A failure is a missing or wrong secret or signature, or an
unknown gateway or instance (probing for instance names). Fails open with Redis down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from redis.asyncio import Redis

from app.domain.gateways.base import WebhookTargetUnknown, WebhookUnauthorized
from app.lib.throttle import ClientThrottle, client_address


class WebhookAuthThrottle:
    def __init__(self, redis: Redis, key_prefix: str, per_minute: int) -> None:
        self._budget = ClientThrottle(
            redis,
            f"{key_prefix}:webhook-auth-failures",
            per_minute,
            "too many failed webhook verifications from this address; try again later",
        )

    async def refuse_if_over(self, client: str) -> None:
        self._budget.refuse_if_spent(await self._budget.current(client))

    @asynccontextmanager
    async def counting_failures(self, client: str) -> AsyncIterator[None]:
        """Count a failure of `client` if the block raises a verification failure (and let it propagate)."""
        try:
            yield
        except (WebhookUnauthorized, WebhookTargetUnknown):
            await self._budget.count(client)
            raise


def webhook_throttle_of(connection: ASGIConnection[Any, Any, Any, Any]) -> WebhookAuthThrottle:
    throttle: WebhookAuthThrottle = connection.app.state.webhook_throttle
    return throttle


async def refuse_throttled_clients(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard of the webhook routes: runs before the handler, so a throttled request costs no database
    lookup and no body."""
    await webhook_throttle_of(connection).refuse_if_over(client_address(connection))
