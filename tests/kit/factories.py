"""polyfactory factories for the models; `create_tenant` (an org, two agents, one instance per gateway) and
`create_conversation` (a contact's conversation with its messages, seq 1..n, as ingest leaves them) for
tests that need rows to read rather than the ingest path itself (issue 14: they were built by hand)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from polyfactory import Use
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    Agent,
    AgentRole,
    Contact,
    Conversation,
    Direction,
    GatewayKind,
    Message,
    MessageStatus,
    MessageType,
    Organization,
    WhatsAppInstance,
)
from app.db.models.base import Base
from app.db.models.conversation import ConversationStatus
from app.domain.accounts.passwords import hash_password
from tests.kit.databases import plain_dsn

Row = TypeVar("Row", bound=Base)

PASSWORD = "correct horse battery staple"
_PASSWORD_HASH = hash_password(PASSWORD)  # hashing is deliberately slow: do it once per run


class _RowFactory(SQLAlchemyFactory[Row]):
    """Rows only: ids are given by the caller (org_id=…), relationships are never built."""

    __is_base_factory__ = True
    __set_relationships__ = False
    __set_foreign_keys__ = False


class OrganizationFactory(_RowFactory[Organization]):
    name = Use(lambda: f"Org {secrets.token_hex(3)}")
    slug = Use(lambda: f"org-{secrets.token_hex(6)}")


class AgentFactory(_RowFactory[Agent]):
    email = Use(lambda: f"agent-{secrets.token_hex(6)}@example.com")
    name = Use(lambda: f"Agent {secrets.token_hex(2)}")
    password_hash = _PASSWORD_HASH
    role = AgentRole.AGENT
    is_active = True
    token_generation = 0


class InstanceFactory(_RowFactory[WhatsAppInstance]):
    name = Use(lambda: f"inst-{secrets.token_hex(6)}")
    webhook_secret = Use(lambda: secrets.token_urlsafe(24))
    verify_token = Use(lambda: secrets.token_urlsafe(12))
    api_base_url = None
    api_token = None
    phone_number_id = Use(lambda: str(secrets.randbelow(10**15)))
    is_active = True


@dataclass
class Tenant:
    org: Organization
    admin: Agent
    agent: Agent
    instances: dict[GatewayKind, WhatsAppInstance] = field(default_factory=dict)

    @property
    def org_id(self) -> UUID:
        return self.org.id

    def instance(self, gateway: str | GatewayKind) -> WhatsAppInstance:
        return self.instances[GatewayKind(gateway)]


async def create_tenant(session: AsyncSession) -> Tenant:
    org = OrganizationFactory.build()
    session.add(org)
    await session.flush()
    admin = AgentFactory.build(org_id=org.id, role=AgentRole.ADMIN)
    agent = AgentFactory.build(org_id=org.id)
    instances = {kind: InstanceFactory.build(org_id=org.id, gateway=kind) for kind in GatewayKind}
    session.add_all([admin, agent, *instances.values()])
    await session.commit()
    # Detached, so a test that expires its session's objects keeps the tenant readable.
    for obj in (org, admin, agent, *instances.values()):
        session.expunge(obj)
    return Tenant(org=org, admin=admin, agent=agent, instances=instances)


class ContactFactory(_RowFactory[Contact]):
    wa_id = Use(lambda: f"5511{secrets.randbelow(10**9):09d}")
    name = "Customer"


class ConversationFactory(_RowFactory[Conversation]):
    status = ConversationStatus.OPEN
    last_seq = 0
    last_message_at = Use(lambda: datetime.now(UTC))
    last_message_preview = None
    last_message_direction = None
    unread_count = 0


class MessageFactory(_RowFactory[Message]):
    """A text message; inbound messages are `received`, outbound ones `delivered`."""

    gateway_message_id = Use(lambda: f"MSG{secrets.token_hex(8).upper()}")
    direction = Direction.INBOUND
    type = MessageType.TEXT
    body = "hello"
    status = MessageStatus.RECEIVED
    sent_at = Use(lambda: datetime.now(UTC))
    received_at = Use(lambda: datetime.now(UTC))
    raw = Use(dict[str, Any])
    client_message_id = None
    author_id = None
    sending_since = None
    send_attempts = 0
    error = None


async def create_conversation(
    session: AsyncSession,
    tenant: Tenant,
    *,
    gateway: GatewayKind | str = GatewayKind.EVOLUTION,
    messages: int = 0,
    wa_id: str | None = None,
) -> tuple[Conversation, list[Message]]:
    """A contact of `tenant` on its `gateway` instance and their open conversation with `messages` text
    messages, seq 1..n, a minute apart, inbound and outbound in turn; last_seq and the inbox line agree."""
    instance = tenant.instance(gateway)
    contact = ContactFactory.build(org_id=tenant.org_id, **({"wa_id": wa_id} if wa_id else {}))
    session.add(contact)
    await session.flush()
    start = datetime.now(UTC) - timedelta(minutes=messages)
    rows = [
        MessageFactory.build(
            org_id=tenant.org_id,
            instance_id=instance.id,
            seq=seq,
            body=f"message {seq}",
            direction=Direction.INBOUND if seq % 2 else Direction.OUTBOUND,
            status=MessageStatus.RECEIVED if seq % 2 else MessageStatus.DELIVERED,
            sent_at=start + timedelta(minutes=seq),
            received_at=start + timedelta(minutes=seq),
        )
        for seq in range(1, messages + 1)
    ]
    last = rows[-1] if rows else None
    conversation = ConversationFactory.build(
        org_id=tenant.org_id,
        instance_id=instance.id,
        contact_id=contact.id,
        last_seq=messages,
        last_message_at=last.sent_at if last else datetime.now(UTC),
        last_message_preview=last.body if last else None,
        last_message_direction=str(last.direction) if last else None,
    )
    session.add(conversation)
    await session.flush()
    for row in rows:
        row.conversation_id = conversation.id
    session.add_all(rows)
    await session.commit()
    for obj in (contact, conversation, *rows):
        session.expunge(obj)
    return conversation, rows


async def seed_conversations(
    database_url: str, tenant: Tenant, cold: int, *, hot_messages: int = 120, cold_messages: int = 3
) -> tuple[UUID, list[UUID]]:
    """Bench scale, by set-based SQL: one hot conversation of `hot_messages` and `cold` conversations of
    `cold_messages` on the tenant's Evolution instance (ids: the hot one, then the cold ones)."""
    org, instance = tenant.org_id, tenant.instance("evolution").id
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        async with conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE seed ON COMMIT DROP AS SELECT g, "
                "CASE WHEN g = 0 THEN $1::int ELSE $2::int END AS k, gen_random_uuid() AS contact_id, "
                "gen_random_uuid() AS conversation_id FROM generate_series(0, $3::int) g",
                hot_messages,
                cold_messages,
                cold,
            )
            await conn.execute(
                "INSERT INTO contacts (id, org_id, wa_id, name, created_at, updated_at) "
                "SELECT contact_id, $1, '5511' || lpad(g::text, 9, '0'), 'Customer ' || g, now(), now() "
                "FROM seed",
                org,
            )
            await conn.execute(
                "INSERT INTO conversations (id, org_id, instance_id, contact_id, status, last_seq, "
                "last_message_at, last_message_preview, last_message_direction, unread_count, "
                "created_at, updated_at) "
                "SELECT conversation_id, $1, $2, contact_id, 'open', k, now() - g * interval '1 second', "
                "'message ' || k, 'inbound', 0, now(), now() FROM seed",
                org,
                instance,
            )
            await conn.execute(
                "INSERT INTO messages (id, org_id, conversation_id, instance_id, seq, gateway_message_id, "
                "direction, type, body, status, sent_at, received_at, raw, send_attempts, created_at, "
                "updated_at) "
                "SELECT gen_random_uuid(), $1, s.conversation_id, $2, m, 'SEED' || s.g || '-' || m, "
                "CASE WHEN m % 2 = 0 THEN 'outbound' ELSE 'inbound' END, 'text', "
                "'Hello, this is message ' || m || ' of conversation ' || s.g || ': where is my order?', "
                "CASE WHEN m % 2 = 0 THEN 'delivered' ELSE 'received' END, "
                "now() - (s.k - m) * interval '1 minute', now() - (s.k - m) * interval '1 minute', "
                "'{}'::jsonb, 0, now(), now() "
                "FROM seed s, generate_series(1, s.k) m",
                org,
                instance,
            )
            rows = await conn.fetch("SELECT conversation_id FROM seed ORDER BY g")
        await conn.execute("ANALYZE contacts; ANALYZE conversations; ANALYZE messages")
    finally:
        await conn.close()
    ids = [row["conversation_id"] for row in rows]
    return ids[0], ids[1:]
