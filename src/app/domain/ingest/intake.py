"""A webhook request, end to end, as one use case the Litestar route and the lean ASGI path both call
(issue 13): judge the (address, instance) pair (ingest.throttle) → find the instance (RecentInstances,
else Postgres) → verify what the head proves → read the body within its limits (ingest.bodies) → parse →
apply with the webhooks arriving meanwhile (IngestBatcher) → the acknowledgement, after that commit.

Both callers run exactly this, so the checks cannot drift apart; they differ only in how the answer (or the
exception, rendered by Litestar's own handlers either way) reaches the client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar import Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.gateways.base import WebhookHead
from app.domain.gateways.schemas import WebhookAck
from app.domain.gateways.webhook_helpers import webhook_query
from app.domain.ingest.batcher import IngestBatcher
from app.domain.ingest.bodies import BodySource, WebhookBodies
from app.domain.ingest.recent_instances import RecentInstances
from app.domain.ingest.service import WebhookService
from app.domain.ingest.throttle import WebhookAuthThrottle
from app.lib.throttle import client_address


@dataclass(frozen=True)
class WebhookIntake:
    """What receiving a webhook needs of its process (one per process, made by create_app)."""

    throttle: WebhookAuthThrottle
    recent: RecentInstances
    bodies: WebhookBodies
    batcher: IngestBatcher
    sessions: Callable[[], AsyncSession]  # only for an instance not in `recent`

    async def receive(self, request: Request[Any, Any, Any], gateway: str, instance: str) -> WebhookAck:
        """The Litestar route's call: its Request is the head and the body."""
        query = webhook_query(request.query_params, request.scope["query_string"])
        head = WebhookHead(headers=request.headers, query=query)
        return await self.receive_parts(client_address(request), head, request, gateway, instance)

    async def receive_parts(
        self, client: str, head: WebhookHead, body: BodySource, gateway: str, instance: str
    ) -> WebhookAck:
        """The lean path's call (app.server.webhook_path): the same use case from a view of the bare scope,
        without building Litestar's Request and Headers for every webhook."""
        # No body parameter: the service reads it (ingest.bodies) only once the headers let it.
        async with self.throttle.judging(client, gateway, instance):
            service = WebhookService(self.sessions, self.recent, self.batcher)
            result = await service.receive(gateway, instance, head, self.bodies.reader(body))
        return WebhookAck(
            status="ok",
            created=len(result.created),
            duplicates=result.duplicates,
            statuses=len(result.statuses),
            ignored=result.ignored,
        )
