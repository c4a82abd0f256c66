"""Receiving a webhook: find the instance, verify, parse, apply with the webhooks arriving meanwhile
(group commit, issue 13: app.domain.ingest.batcher), answer after that commit.

The body is read only once the instance is found and what headers and URL can prove is verified, so a
forgery with a wrong or missing header secret, or for an unknown instance, costs no upload; a body only the
body can verify is read within the gateway's limit and a bounded budget (`ingest.bodies`, issue 12).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import GatewayKind
from app.domain.conversations.ingest import IngestResult
from app.domain.gateways.base import WebhookHead, WebhookRequest, WebhookTargetUnknown
from app.domain.gateways.events import GatewayEvent, IgnoredEvent
from app.domain.gateways.instances import (
    ReceivingInstance,
    credentials_of,
    find_receiving_instance,
    is_instance_name,
)
from app.domain.gateways.registry import get_adapter
from app.domain.ingest.batch_rows import RequestFailed
from app.domain.ingest.batcher import IngestBatcher
from app.domain.ingest.bodies import ReadBody
from app.domain.ingest.recent_instances import RecentInstances
from app.domain.stats.ingest import INGEST
from app.lib import metrics
from app.lib.errors import problem

log = structlog.get_logger()

_FOREIGN_KEY_VIOLATION = "23503"  # the instance was deleted after it was looked up (RecentInstances)


def _refuse_unconfigured(instance: ReceivingInstance) -> None:
    """A Cloud API instance without a phone number id could not tell its webhooks from those of the Meta
    app's other numbers (one app secret signs them all): it accepts nothing until configured. Checked after
    the signature, so only Meta (or whoever holds the app secret) learns it."""
    if instance.gateway is GatewayKind.CLOUDAPI and not instance.phone_number_id:
        raise problem(
            422,
            "this Cloud API instance has no phone_number_id configured, so it cannot tell its webhooks from "
            "those of the app's other numbers; configure the instance's phone_number_id",
        )


def _reject_foreign_accounts(instance: ReceivingInstance, events: list[GatewayEvent]) -> None:
    """A payload naming another gateway account is refused whole: one instance's secret must not let its
    holder write into a conversation of another instance (or another organisation).

    A Cloud API app secret signs the webhooks of every phone number of the Meta app, so the phone number id
    is what tells them apart: a Cloud API event must name the instance's.
    """
    if instance.gateway is GatewayKind.CLOUDAPI and any(
        not isinstance(e, IgnoredEvent) and not e.account for e in events
    ):
        raise problem(422, "payload names no metadata.phone_number_id")
    expected = instance.phone_number_id if instance.gateway is GatewayKind.CLOUDAPI else instance.name
    foreign = sorted(
        {e.account for e in events if not isinstance(e, IgnoredEvent) and e.account and e.account != expected}
    )
    if foreign:
        raise problem(422, f"payload is addressed to {', '.join(foreign)}, not to this instance")


class WebhookService:
    def __init__(
        self,
        sessions: Callable[[], AsyncSession],
        recent: RecentInstances,
        batcher: IngestBatcher | None = None,
    ) -> None:
        # A session is opened only when the instance must be looked up (not in `recent`).
        self.sessions = sessions
        self._batcher = batcher
        self.recent = recent

    @property
    def batcher(self) -> IngestBatcher:
        assert self._batcher is not None, "receiving webhooks needs the process's IngestBatcher"
        return self._batcher

    async def find_instance(self, gateway: str, instance_name: str) -> ReceivingInstance:
        try:
            kind = GatewayKind(gateway)
        except ValueError:
            raise WebhookTargetUnknown(f"unknown gateway '{gateway}'") from None
        if not is_instance_name(instance_name):  # NUL, control characters, too long: nothing to look up
            raise WebhookTargetUnknown(f"unknown {gateway} instance")
        instance = self.recent.get(kind, instance_name)
        if instance is not None:
            return instance
        instance = await self.recent.look_up_once(
            kind, instance_name, lambda: self._look_up(kind, instance_name)
        )
        if instance is None:
            raise WebhookTargetUnknown(f"unknown {gateway} instance '{instance_name}'")
        return instance

    async def _look_up(self, kind: GatewayKind, instance_name: str) -> ReceivingInstance | None:
        # The lookup's session ends here: its connection goes back to the pool instead of waiting on an
        # upload (a slow body must not hold a database connection).
        async with self.sessions() as session:
            return await find_receiving_instance(session, kind, instance_name)

    async def receive(
        self,
        gateway: str,
        instance_name: str,
        head: WebhookHead,
        read_body: ReadBody,
    ) -> IngestResult:
        adapter = get_adapter(gateway)
        if adapter is None:
            raise WebhookTargetUnknown(f"unknown gateway '{gateway}'")
        instance = await self.find_instance(gateway, instance_name)
        credentials = credentials_of(instance)
        verified = adapter.verify_head(head, credentials)

        def verify(body: bytearray) -> None:
            adapter.verify(WebhookRequest(headers=head.headers, query=head.query, body=body), credentials)

        # Not verified by its headers: read under the unverified budget and verified there (ingest.bodies).
        body = await read_body(instance.gateway, None if verified else verify)
        _refuse_unconfigured(instance)
        events = adapter.parse(body)
        _reject_foreign_accounts(instance, events)
        started = time.perf_counter()
        # Group commit (issue 13): applied with the webhooks that arrived meanwhile, in one transaction;
        # answered after that commit and the batch's publish (app.domain.ingest.batcher).
        answer = await self.batcher.apply(instance.org_id, instance.id, events)
        if isinstance(answer, RequestFailed):
            if answer.sqlstate == _FOREIGN_KEY_VIOLATION:  # the instance was deleted after it was looked up
                self.recent.forget(instance.gateway, instance.name)
                raise WebhookTargetUnknown(f"unknown {gateway} instance '{instance_name}'")
            log.error("webhook refused by the database", sqlstate=answer.sqlstate, error=answer.error)
            raise problem(500, "internal error")
        result, published = answer.result, answer.published
        seconds = time.perf_counter() - started
        metrics.INGEST_SECONDS.observe(seconds)
        metrics.WEBHOOKS.labels(gateway).inc()
        if result.created:
            metrics.MESSAGES_PERSISTED.labels(gateway).inc(len(result.created))
        if result.duplicates:
            metrics.DUPLICATES.labels(gateway).inc(result.duplicates)
        INGEST.observe(statuses=len(result.statuses), seconds=seconds)  # what Prometheus does not count
        log.info(
            "webhook committed",
            gateway=gateway,
            instance=instance_name,
            created=len(result.created),
            duplicates=result.duplicates,
            statuses=len(result.statuses),
            ignored=result.ignored,
            published=published,
        )
        for stored in result.created:
            log.info(
                "message persisted and notified",
                message_id=str(stored.id),
                conversation_id=str(stored.conversation_id),
                seq=stored.seq,
                published=published,
            )
        return result
