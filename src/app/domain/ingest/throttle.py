"""Webhook routes against secret guessing and name probing, counted in Redis across every API process
(`app.lib.throttle`).

Per (client address, gateway, instance name) pair: each request takes a slot of the pair's budget,
WEBHOOK_AUTH_FAILURES_PER_MINUTE, atomically before its secret or signature is evaluated; a verified request
gives its slot back, a failed one keeps it. So concurrent guesses cannot outrun the budget (issue 12,
finding 6), and a pair whose budget is spent gets 429 on every request until its minute passes, even with the
right secret (else guessing would go on: the one right guess would still be told apart).

Per pair and not per address (issue 12, finding 3): one WPPConnect/Evolution server often hosts many
organisations' instances, and Meta sends every app's webhooks from shared egress. Failures for one instance
(a stale secret in org B) must not refuse another instance's verified webhooks from the same host.

Unknown gateways and instance names (probing) are counted per address in a budget of their own, after the
lookup: past it, an unknown name answers 429 instead of 404, so at most the budget of names per minute learn
whether they exist, while the same address's webhooks for instances that do exist are judged by their own
pair's budget only.

Verified gateway traffic is never refused and never counted (WPPConnect never retries, so a 429 to it would
lose messages). Fails open with Redis down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.connection import ASGIConnection
from redis.asyncio import Redis

from app.domain.gateways.base import WebhookTargetUnknown, WebhookUnauthorized
from app.lib.throttle import ClientThrottle
from app.lib.throttle_calls import ThrottleCalls


class WebhookAuthThrottle:
    def __init__(self, redis: Redis, calls: ThrottleCalls, key_prefix: str, per_minute: int) -> None:
        refusal = "too many failed webhook verifications from this address; try again later"
        self._pairs = ClientThrottle(redis, calls, f"{key_prefix}:webhook-auth-failures", per_minute, refusal)
        self._unknown = ClientThrottle(
            redis, calls, f"{key_prefix}:webhook-unknown-targets", per_minute, refusal
        )

    @asynccontextmanager
    async def judging(self, client: str, gateway: str, instance: str) -> AsyncIterator[None]:
        """Around one request's lookup and verification: reserve the pair's slot first, keep it if the block
        raises a verification failure, give it back otherwise; count an unknown target in the address's
        probing budget (a 429 past it)."""
        reservation = await self._pairs.reserve(f"{client}:{gateway}:{instance}")
        try:
            yield
        except WebhookUnauthorized:
            await reservation.settle(failed=True)
            raise
        except WebhookTargetUnknown:
            await reservation.settle(failed=False)  # no secret of a real instance was tried
            self._unknown.refuse_if_over(await self._unknown.count(client))
            raise
        except BaseException:
            await reservation.settle(
                failed=False
            )  # verified, or never evaluated (the body's or server's fault)
            raise
        await reservation.settle(failed=False)


def webhook_throttle_of(connection: ASGIConnection[Any, Any, Any, Any]) -> WebhookAuthThrottle:
    throttle: WebhookAuthThrottle = connection.app.state.webhook_throttle
    return throttle
