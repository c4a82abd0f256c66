"""Worker jobs run against the real database and are safe to run twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Conversation
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.conversations.ingest import IngestService
from app.domain.realtime.publisher import EventPublisher
from app.workers.conversations import reconcile_conversation
from tests.kit.data import text_message
from tests.kit.factories import create_tenant


async def test_reconcile_rebuilds_a_damaged_summary_and_is_idempotent(
    engine: AsyncEngine, session: AsyncSession, redis: Redis, settings: Settings
):
    tenant = await create_tenant(session)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    base = datetime.now(UTC) - timedelta(minutes=5)
    async with sessionmaker() as s:
        result = await IngestService(s).apply(
            org_id=tenant.org_id,
            instance_id=tenant.instance("wppconnect").id,
            events=[
                text_message("5511933330000", f"m{i}", sent_at=base + timedelta(seconds=i)) for i in range(3)
            ],
        )
        await s.commit()
    conversation_id = result.created[0].conversation_id
    async with sessionmaker() as s:  # simulate a bad manual edit
        await s.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(last_seq=0, last_message_preview="wrong", last_message_at=base - timedelta(days=1))
        )
        await s.commit()

    publisher = EventPublisher(
        redis,
        settings.redis.key_prefix,
        PageCache(redis, CacheKeys(settings.redis.key_prefix), settings.cache),
    )
    ctx = {"sessionmaker": sessionmaker, "publisher": publisher}
    first = await reconcile_conversation(ctx, str(conversation_id))
    second = await reconcile_conversation(ctx, str(conversation_id))

    assert first == second == {"conversation_id": str(conversation_id), "last_seq": 3}
    conversation = await session.get(Conversation, conversation_id)
    assert conversation is not None
    assert (conversation.last_seq, conversation.last_message_preview) == (3, "m2")
    assert conversation.last_message_at == base + timedelta(seconds=2)
    assert conversation.unread_count == 3  # read markers are not the job's to rebuild
    # Cached pages built from the damaged summary are stale now (their versions moved twice: two runs).
    keys = CacheKeys(settings.redis.key_prefix)
    assert await redis.get(keys.messages_scope(tenant.org_id, conversation_id)) == b"2"
    assert await redis.get(keys.inbox_scope(tenant.org_id)) == b"2"
