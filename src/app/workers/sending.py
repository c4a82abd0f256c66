"""`send_message`: deliver an agent's outbound message through its instance's gateway, at most once.

The database decides (arq may run a job twice, or after a worker died):
  claim   — in a transaction, lock the row (SKIP LOCKED: a concurrent run of the same job backs off), require
            status pending and no send in flight, mark `sending_since`; commit.
  send    — call the gateway outside any transaction.
  settle  — sent with the gateway's id, or back to claimable with Retry(defer) for a retryable failure, or
            failed with the gateway's reason. A claim still set when a job starts means a worker died
            mid-send: the gateway may have the message, so it is marked failed rather than sent twice.
Every status change is published as `message.updated` after its commit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from arq import Retry
from sqlalchemy import select, update

from app.db.models import Contact, Conversation, Message, MessageStatus, WhatsAppInstance
from app.domain.gateways.sending import SendFailed, SendTarget, get_sender
from app.domain.realtime.events import status_envelope
from app.lib.jobs import SEND_MESSAGE, queue_name, send_job_id

log = structlog.get_logger()

MAX_ATTEMPTS = 5
_BACKOFF_S = (2, 10, 30, 60)
INTERRUPTED = "send interrupted (worker stopped mid-send); not retried so the customer never gets it twice"


async def _publish_status(ctx: dict[str, Any], org_id: UUID, message: Message, status: MessageStatus) -> None:
    envelope = status_envelope(message.conversation_id, message.seq, message.id, status.value)
    await ctx["publisher"].publish(org_id, [envelope])


async def _settle(ctx: dict[str, Any], message_id: UUID, **values: Any) -> Message:
    async with ctx["sessionmaker"]() as session:
        await session.execute(update(Message).where(Message.id == message_id).values(**values))
        await session.commit()
        message: Message = await session.get_one(Message, message_id)
        return message


async def send_message(ctx: dict[str, Any], message_id: str) -> str:
    mid = UUID(message_id)
    now = datetime.now(UTC)
    async with ctx["sessionmaker"]() as session:
        row = (
            await session.execute(
                select(Message, Contact.wa_id, WhatsAppInstance)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .join(Contact, Contact.id == Conversation.contact_id)
                .join(WhatsAppInstance, WhatsAppInstance.id == Message.instance_id)
                .where(Message.id == mid)
                .with_for_update(of=Message, skip_locked=True)
            )
        ).one_or_none()
        if row is None:
            return "skipped: unknown, or another run holds it"
        message, wa_id, instance = row
        if message.status is not MessageStatus.PENDING:
            return f"skipped: already {message.status.value}"
        org_id = message.org_id
        if message.sending_since is not None:
            await session.rollback()
            failed = await _settle(
                ctx, mid, status=MessageStatus.FAILED, sending_since=None, error=INTERRUPTED
            )
            await _publish_status(ctx, org_id, failed, MessageStatus.FAILED)
            return "failed: interrupted earlier"
        message.sending_since = now
        message.send_attempts += 1
        attempt = message.send_attempts
        text = message.body or ""
        target = SendTarget(
            gateway=instance.gateway.value,
            instance_name=instance.name,
            api_base_url=instance.api_base_url,
            api_token=instance.api_token,
            phone_number_id=instance.phone_number_id,
        )
        await session.commit()

    try:
        sent = await get_sender(target.gateway, ctx["http"]).send_text(target, wa_id, text)
    except SendFailed as exc:
        if exc.retryable and attempt < MAX_ATTEMPTS:
            await _settle(ctx, mid, sending_since=None, error=exc.reason)
            delay = _BACKOFF_S[min(attempt - 1, len(_BACKOFF_S) - 1)]
            log.warning("send failed; will retry", message_id=message_id, attempt=attempt, reason=exc.reason)
            raise Retry(defer=timedelta(seconds=delay)) from exc
        failed = await _settle(ctx, mid, status=MessageStatus.FAILED, sending_since=None, error=exc.reason)
        await _publish_status(ctx, org_id, failed, MessageStatus.FAILED)
        log.warning("send failed", message_id=message_id, attempt=attempt, reason=exc.reason)
        return f"failed: {exc.reason}"
    sent_message = await _settle(
        ctx,
        mid,
        status=MessageStatus.SENT,
        gateway_message_id=sent.gateway_message_id,
        sending_since=None,
        error=None,
    )
    await _publish_status(ctx, org_id, sent_message, MessageStatus.SENT)
    log.info("message sent", message_id=message_id, gateway=target.gateway, attempt=attempt)
    return "sent"


async def sweep_pending_outbound(ctx: dict[str, Any]) -> int:
    """Enqueue sends that were never enqueued (Redis was down at commit) or whose job was lost."""
    cutoff = datetime.now(UTC) - timedelta(seconds=30)
    async with ctx["sessionmaker"]() as session:
        ids = (
            await session.scalars(
                select(Message.id).where(
                    Message.status == MessageStatus.PENDING,
                    Message.created_at < cutoff,
                    Message.client_message_id.is_not(None),
                )
            )
        ).all()
    queue = queue_name(ctx["settings"].redis.key_prefix)
    for message_id in ids:
        await ctx["redis"].enqueue_job(
            SEND_MESSAGE, str(message_id), _job_id=send_job_id(message_id), _queue_name=queue
        )
    return len(ids)
