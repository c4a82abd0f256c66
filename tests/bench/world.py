"""What the suite's own scenarios share: one scratch database, a team (an organisation of up to 1,000 agents
with their tokens and a shared inbox of conversations), a second organisation for the history figures, the
settings every API process of the suite runs with, and the numbered message bodies the clients recognise.

Message bodies start with a marker and the message's number ("sb-0000042 …"), so a client finds a message
in a poll response or a frame with a substring search (the inbox line's preview starts with the body too)
instead of decoding JSON: the bench client shares two cores with the servers it measures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.config import Settings
from app.domain.accounts.auth import TokenIssuer
from tests.kit.clients import HttpConnection
from tests.kit.data import env_for, evolution_body, make_settings
from tests.kit.databases import plain_dsn
from tests.kit.factories import AgentFactory, Tenant, create_tenant

INBOX_PATH = "/api/whatsapp-optimized/conversations"
PAGE_PATH = "/api/whatsapp-optimized/messages/{}"
MARK = "sb-"
DIGITS = 7
PREVIEW_MARK = b'"last_message_preview":"' + MARK.encode()
BODY_MARK = b'"body":"' + MARK.encode()


def body_text(number: int) -> str:
    return f"{MARK}{number:0{DIGITS}d} where is my order?"


def find_numbers(data: Any, mark: Any) -> list[int]:
    """Every message number after `mark` in a response body (bytes) or a frame (str, with a str mark)."""
    numbers = []
    at = data.find(mark)
    while at >= 0:
        start = at + len(mark)
        digits = data[start : start + DIGITS]
        if digits.isdigit():
            numbers.append(int(digits))
        at = data.find(mark, start)
    return numbers


def find_key(node: Any, key: str) -> Any:
    """The first value under `key` anywhere in a decoded JSON document (depth first); None if absent. The
    stats routes' shapes have changed over time: the suite looks figures up by name, not by path."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            if (found := find_key(value, key)) is not None:
                return found
    return None


def suite_settings(database_url: str) -> Settings:
    """Production defaults but for logging (warnings only) and a Redis key prefix of the run's own."""
    return make_settings(database_url, key_prefix="crm-bench-suite")


@dataclass
class World:
    database_url: str
    settings: Settings
    env: dict[str, str]
    team: Tenant
    tokens: list[str]  # agent i of the team
    admin_token: str
    history_tenant: Tenant
    history_admin_token: str
    conversation_count: int
    setup_messages: int
    chats: list[str] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)  # the team's, in the order of `chats`
    next_number: int = 0  # message numbers are never reused, so no run counts another run's message

    def numbers(self, count: int) -> range:
        first = self.next_number
        self.next_number += count
        return range(first, first + count)

    def open_conversation(self, agent: int) -> str:
        """The conversation agent `agent` has open (agents spread over the inbox)."""
        return self.conversations[agent % len(self.conversations)]

    def webhook(self, chat: int, message_id: str, text: str) -> tuple[str, bytes, dict[str, str]]:
        instance = self.team.instance("evolution")
        headers = {"Content-Type": "application/json", "X-Webhook-Secret": instance.webhook_secret}
        body = evolution_body(instance.name, message_id, self.chats[chat], text)
        return f"/api/webhooks/evolution/{instance.name}", body, headers

    async def ensure_conversations(self, port: int) -> None:
        """The team's inbox, once per run: `conversation_count` conversations, each made by a webhook through
        the API (as a gateway would), then given `setup_messages` messages in all by set-based SQL (so the
        latest page an agent reads is a full one, as in a real inbox)."""
        if self.conversations:
            return
        self.chats = [f"55219{c:08d}" for c in range(self.conversation_count)]
        jobs = iter(range(self.conversation_count))

        async def sender() -> None:
            conn = await HttpConnection.open("127.0.0.1", port)
            try:
                for c in jobs:
                    status, payload, _ = await conn.post(*self.webhook(c, f"SUITE-SETUP-{c}", "hello"))
                    if status != 200:
                        raise RuntimeError(f"setup webhook answered {status}: {payload[:300]!r}")
            finally:
                await conn.close()

        await asyncio.gather(*(sender() for _ in range(8)))
        db = await asyncpg.connect(plain_dsn(self.database_url))
        try:
            async with db.transaction():
                await db.execute(_SEED_HISTORY, self.team.org_id, max(0, self.setup_messages - 1))
                await db.execute(
                    "UPDATE conversations SET last_seq = last_seq + $2 WHERE org_id = $1",
                    self.team.org_id,
                    max(0, self.setup_messages - 1),
                )
            await db.execute("ANALYZE messages")
            rows = await db.fetch(
                "SELECT ct.wa_id, c.id FROM conversations c JOIN contacts ct ON ct.id = c.contact_id "
                "WHERE c.org_id = $1",
                self.team.org_id,
            )
        finally:
            await db.close()
        by_chat: dict[str, UUID] = {row["wa_id"]: row["id"] for row in rows}
        self.conversations = [str(by_chat[chat]) for chat in self.chats]


# Older history for every conversation of an org, after the message its first webhook made (as
# tests.kit.factories.seed_conversations seeds it); the caller moves last_seq on in the same transaction.
_SEED_HISTORY = (
    "INSERT INTO messages (id, org_id, conversation_id, instance_id, seq, gateway_message_id, direction, "
    "type, body, status, sent_at, received_at, raw, send_attempts, created_at, updated_at) "
    "SELECT gen_random_uuid(), c.org_id, c.id, c.instance_id, c.last_seq + g, "
    "'SUITE-HIST-' || c.id || '-' || g, "
    "CASE WHEN g % 2 = 0 THEN 'outbound' ELSE 'inbound' END, 'text', "
    "'Hello, this is message ' || g || ' of this conversation: where is my order?', "
    "CASE WHEN g % 2 = 0 THEN 'delivered' ELSE 'received' END, now(), now(), '{}'::jsonb, 0, now(), now() "
    "FROM conversations c, generate_series(1, $2::int) g WHERE c.org_id = $1"
)


async def build_world(
    database_url: str, agents: int, conversations: int, setup_messages: int
) -> tuple[World, float]:
    """The organisations and agents (rows in the database, tokens as POST /api/auth/login would issue)."""
    started = time.perf_counter()
    settings = suite_settings(database_url)
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            team = await create_tenant(session)
            history_tenant = await create_tenant(session)
            extra = [AgentFactory.build(org_id=team.org_id) for _ in range(max(0, agents - 1))]
            session.add_all(extra)
            await session.commit()
            for agent in extra:
                session.expunge(agent)
    finally:
        await engine.dispose()
    issuer = TokenIssuer(settings.auth)
    members = [team.agent, *extra]
    world = World(
        database_url=database_url,
        settings=settings,
        env=env_for(settings),
        team=team,
        tokens=[issuer.issue(agent) for agent in members],
        admin_token=issuer.issue(team.admin),
        history_tenant=history_tenant,
        history_admin_token=issuer.issue(history_tenant.admin),
        conversation_count=conversations,
        setup_messages=setup_messages,
    )
    return world, time.perf_counter() - started
