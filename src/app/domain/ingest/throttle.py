"""Webhook routes against secret guessing and name probing, counted in Redis across every API process
(`app.lib.throttle`).

Per (client address, gateway, instance name) pair, a budget of WEBHOOK_AUTH_FAILURES_PER_MINUTE failed
verifications. Every request first reads its pair's failures (one counter read, coalesced with the other
requests of the loop turn into one MGET): a pair whose budget is spent gets 429 on every request until its
minute passes, even with the right secret (else guessing would go on: the one right guess would still be told
apart). A failed verification is counted after it is evaluated, and the failure that goes past the budget is
answered 429 instead of 401: however many guesses run at once, here or in other processes, at most the
budget are answered on their merits (issue 12, finding 6). Evaluating a header secret is a constant-time
compare; a body signature is evaluated only within the unverified read budget (`ingest.bodies`).

Until issue 13 each request reserved a slot before its evaluation and gave it back after: two Lua scripts per
verified webhook, the largest single cost of the lean path. A verified webhook now costs one read, and writes
nothing.

Per pair and not per address (issue 12, finding 3): one WPPConnect/Evolution server often hosts many
organisations' instances, and Meta sends every app's webhooks from shared egress. Failures for one instance
(a stale secret in org B) must not refuse another instance's verified webhooks from the same host.

Unknown gateways and instance names (probing) are counted per address in a budget of their own, after the
lookup: past it, an unknown name answers 429 instead of 404, so at most the budget of names per minute learn
whether they exist, while the same address's webhooks for instances that do exist are judged by their own
pair's budget only.

Verified gateway traffic is never counted, and refused only once its pair's budget is spent by failures
(WPPConnect never retries, so a 429 to it would lose messages). Fails open with Redis down.
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
        self._pairs = ClientThrottle(redis, calls, f"{key_prefix}:webhook-auth-failed", per_minute, refusal)
        self._unknown = ClientThrottle(
            redis, calls, f"{key_prefix}:webhook-unknown-targets", per_minute, refusal
        )

    @asynccontextmanager
    async def judging(self, client: str, gateway: str, instance: str) -> AsyncIterator[None]:
        """Around one request's lookup and verification: refuse a pair whose budget is spent, count a
        verification failure (429 past the budget), count an unknown target in the address's probing budget
        (a 429 past it)."""
        pair = f"{client}:{gateway}:{instance}"
        await self._pairs.refuse_if_spent(pair)
        try:
            yield
        except WebhookUnauthorized as exc:
            window = await self._pairs.count(pair, locally=False)  # Redis down: refuse nothing
            if window is not None and window.count > self._pairs.per_window:
                raise self._pairs.refused(window.resets_in_s) from exc
            raise
        except WebhookTargetUnknown:
            self._unknown.refuse_if_over(await self._unknown.count(client))
            raise


def webhook_throttle_of(connection: ASGIConnection[Any, Any, Any, Any]) -> WebhookAuthThrottle:
    throttle: WebhookAuthThrottle = connection.app.state.webhook_throttle
    return throttle
