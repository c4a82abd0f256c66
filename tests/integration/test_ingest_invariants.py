"""docs/ARCHITECTURE.md invariants 2 to 5 at the service level, against real Postgres under real
concurrency."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.models import Contact, Conversation, Direction, Media, Message, MessageStatus
from app.domain.conversations.ingest import IngestService
from app.domain.gateways.events import GatewayEvent
from tests.kit.data import image_message, status, text_message
from tests.kit.factories import Tenant, create_tenant


async def _apply(
    engine: AsyncEngine, tenant: Tenant, events: list[GatewayEvent], gateway: str = "wppconnect"
):
    instance = tenant.instance(gateway)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        result = await IngestService(session).apply(
            org_id=tenant.org_id, instance_id=instance.id, events=events
        )
        await session.commit()
        return result


async def test_text_message_creates_contact_conversation_and_message(
    engine: AsyncEngine, session: AsyncSession
):
    tenant = await create_tenant(session)
    message = text_message("5511911112222", "oi", contact_name="Ana")
    result = await _apply(engine, tenant, [message])

    assert len(result.created) == 1 and result.created[0].seq == 1
    conversation = await session.get(Conversation, result.created[0].conversation_id)
    assert conversation is not None
    assert (conversation.last_seq, conversation.unread_count, conversation.last_message_preview) == (
        1,
        1,
        "oi",
    )
    contact = await session.get(Contact, conversation.contact_id)
    assert contact is not None and (contact.wa_id, contact.name) == ("5511911112222", "Ana")


async def test_duplicate_delivered_ten_times_concurrently_is_one_row(
    engine: AsyncEngine, session: AsyncSession
):
    tenant = await create_tenant(session)
    message = text_message(gateway_message_id="DUP-1")
    results = await asyncio.gather(*(_apply(engine, tenant, [message]) for _ in range(10)))

    assert sum(len(r.created) for r in results) == 1
    assert sum(r.duplicates for r in results) == 9
    count = await session.scalar(
        select(func.count()).select_from(Message).where(Message.gateway_message_id == "DUP-1")
    )
    assert count == 1
    conversation_id = next(r.created[0].conversation_id for r in results if r.created)
    conversation = await session.get(Conversation, conversation_id)
    assert conversation is not None and (conversation.last_seq, conversation.unread_count) == (1, 1)


async def test_concurrent_messages_get_gapless_seq(engine: AsyncEngine, session: AsyncSession):
    tenant = await create_tenant(session)
    messages = [text_message("5511900000001", f"m{i}") for i in range(200)]
    await asyncio.gather(*(_apply(engine, tenant, [m]) for m in messages))

    seqs = (
        await session.scalars(
            select(Message.seq)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.org_id == tenant.org_id)
            .order_by(Message.seq)
        )
    ).all()
    assert seqs == list(range(1, 201))


async def test_status_only_moves_forward(engine: AsyncEngine, session: AsyncSession):
    tenant = await create_tenant(session)
    sent = text_message(gateway_message_id="OUT-1", direction=Direction.OUTBOUND)
    await _apply(engine, tenant, [sent])

    async def current() -> MessageStatus:
        session.expire_all()
        return (
            await session.scalars(select(Message.status).where(Message.gateway_message_id == "OUT-1"))
        ).one()

    result = await _apply(engine, tenant, [status("OUT-1", MessageStatus.READ)])
    assert len(result.statuses) == 1 and await current() is MessageStatus.READ
    for late in (MessageStatus.DELIVERED, MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.PENDING):
        result = await _apply(engine, tenant, [status("OUT-1", late)])
        assert result.statuses == [] and result.stale_statuses == 1
        assert await current() is MessageStatus.READ


async def test_status_of_inbound_or_unknown_message_changes_nothing(
    engine: AsyncEngine, session: AsyncSession
):
    tenant = await create_tenant(session)
    inbound = text_message(gateway_message_id="IN-1")
    await _apply(engine, tenant, [inbound])
    result = await _apply(
        engine, tenant, [status("IN-1", MessageStatus.READ), status("NOPE", MessageStatus.READ)]
    )
    assert result.statuses == [] and result.stale_statuses == 2
    assert (
        await session.scalars(select(Message.status).where(Message.gateway_message_id == "IN-1"))
    ).one() is (MessageStatus.RECEIVED)


async def test_failed_applies_from_sent_but_not_from_delivered(engine: AsyncEngine, session: AsyncSession):
    tenant = await create_tenant(session)
    await _apply(engine, tenant, [text_message(gateway_message_id="A", direction=Direction.OUTBOUND)])
    await _apply(engine, tenant, [text_message(gateway_message_id="B", direction=Direction.OUTBOUND)])
    await _apply(engine, tenant, [status("B", MessageStatus.DELIVERED)])
    result = await _apply(
        engine, tenant, [status("A", MessageStatus.FAILED), status("B", MessageStatus.FAILED)]
    )
    assert [s.status for s in result.statuses] == [MessageStatus.FAILED]
    assert result.stale_statuses == 1


async def test_own_message_from_phone_is_outbound_and_clears_unread(
    engine: AsyncEngine, session: AsyncSession
):
    tenant = await create_tenant(session)
    await _apply(engine, tenant, [text_message("5511955556666", "pergunta", contact_name="Bia")])
    reply = text_message(
        "5511955556666", "resposta", direction=Direction.OUTBOUND, contact_name="Our Business"
    )
    result = await _apply(engine, tenant, [reply])

    conversation = await session.get(Conversation, result.created[0].conversation_id)
    assert conversation is not None
    assert (conversation.last_seq, conversation.unread_count) == (2, 0)
    assert conversation.last_message_direction == "outbound"
    contact = await session.get(Contact, conversation.contact_id)
    assert contact is not None and contact.name == "Bia"  # our own push name did not overwrite it


async def test_media_message_creates_pending_media_without_inline_bytes_in_raw(
    engine: AsyncEngine, session: AsyncSession
):
    tenant = await create_tenant(session)
    inline = "iVBORw0KGgo" + "A" * 4000
    result = await _apply(engine, tenant, [image_message(inline_base64=inline)])

    stored = result.created[0]
    media = (
        await session.execute(select(Media.state, Media.inline_base64).where(Media.id == stored.media_id))
    ).one()
    assert media.state.value == "pending"
    assert media.inline_base64 == inline  # kept verbatim, not decoded
    raw = (await session.scalars(select(Message.raw).where(Message.id == stored.id))).one()
    assert inline not in str(raw)


async def test_one_webhook_with_several_events_is_one_transaction(engine: AsyncEngine, session: AsyncSession):
    tenant = await create_tenant(session)
    batch = [text_message("5511977770000", f"b{i}") for i in range(5)]
    batch.append(batch[0])  # a duplicate inside the same webhook
    result = await _apply(engine, tenant, batch)
    assert [m.seq for m in result.created] == [1, 2, 3, 4, 5]
    assert result.duplicates == 1
