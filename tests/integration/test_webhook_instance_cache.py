"""Each API process remembers the instances recent webhooks found for WEBHOOK_INSTANCE_CACHE_SECONDS
(ingest/recent_instances.py): a change to an instance reaches it within that time, never later, and an
instance deleted meanwhile answers 404 with nothing stored."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Message, WhatsAppInstance
from app.server.core import create_app
from tests.kit.data import fixture_for, post_webhook, with_message_id
from tests.kit.factories import create_tenant

Client = AsyncTestClient[Litestar]
GATEWAY, FIXTURE = "evolution", "v2_messages_upsert_text"


@asynccontextmanager
async def app_remembering_for(settings: Settings, seconds: float) -> AsyncIterator[Client]:
    app_settings = dataclasses.replace(settings.app, webhook_instance_cache_s=seconds)
    async with AsyncTestClient(app=create_app(dataclasses.replace(settings, app=app_settings))) as client:
        yield client


async def _change(engine: AsyncEngine, instance_id: Any, statement: Any) -> None:
    async with async_sessionmaker(engine)() as session:
        await session.execute(statement.where(WhatsAppInstance.id == instance_id))
        await session.commit()


def _webhooks(instance: WhatsAppInstance) -> Callable[[], Any]:
    """A new message of the instance's chat at each call."""
    return lambda: with_message_id(
        GATEWAY, fixture_for(GATEWAY, FIXTURE, instance), f"C{secrets.token_hex(8).upper()}"
    )


async def test_a_rotated_secret_takes_effect_within_the_cache_lifetime(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    old_secret, new_secret = instance.webhook_secret, secrets.token_urlsafe(24)
    next_webhook = _webhooks(instance)
    async with app_remembering_for(settings, 0.5) as client:
        assert (await post_webhook(client, GATEWAY, instance, next_webhook())).status_code == 200
        await _change(engine, instance.id, update(WhatsAppInstance).values(webhook_secret=new_secret))
        # Within the lifetime the remembered instance answers: the cache is really used.
        assert (await post_webhook(client, GATEWAY, instance, next_webhook())).status_code == 200
        await asyncio.sleep(0.6)
        assert (await post_webhook(client, GATEWAY, instance, next_webhook())).status_code == 401
        instance.webhook_secret = new_secret
        assert (await post_webhook(client, GATEWAY, instance, next_webhook())).status_code == 200
    assert old_secret != new_secret


async def test_with_the_cache_off_a_deactivated_instance_is_refused_at_once(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    next_webhook = _webhooks(instance)
    async with app_remembering_for(settings, 0) as client:
        assert (await post_webhook(client, GATEWAY, instance, next_webhook())).status_code == 200
        await _change(engine, instance.id, update(WhatsAppInstance).values(is_active=False))
        assert (await post_webhook(client, GATEWAY, instance, next_webhook())).status_code == 404


async def test_an_instance_deleted_while_remembered_answers_404_and_stores_nothing(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    next_webhook = _webhooks(instance)
    async with app_remembering_for(settings, 60) as client:
        assert (await post_webhook(client, GATEWAY, instance, next_webhook())).status_code == 200
        await _change(engine, instance.id, delete(WhatsAppInstance))
        response = await post_webhook(client, GATEWAY, instance, next_webhook())
        assert response.status_code == 404, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        # Forgotten: the next one asks Postgres again (and finds nothing there either).
        assert (await post_webhook(client, GATEWAY, instance, next_webhook())).status_code == 404
    count = select(func.count()).select_from(Message).where(Message.org_id == tenant.org_id)
    async with async_sessionmaker(engine)() as fresh:
        assert await fresh.scalar(count) == 0  # the first message went with its instance; none came after
