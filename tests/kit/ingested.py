"""Conversations as ingest writes them, for tests of what comes after it (reads, sends, media jobs): events
applied by `IngestService` on a session of their own, and a tenant whose WPPConnect instance points at a
gateway the worker can call. Issue 14 item 2: `ingest`, `tenant_with_chat` and `downloadable_image` stood in
test modules (test_read_api, test_outbound, test_media_pipeline) that other test modules imported.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.models import GatewayKind, WhatsAppInstance
from app.domain.conversations.ingest import IngestResult, IngestService
from app.domain.gateways.events import GatewayEvent
from tests.kit.data import image_message, text_message
from tests.kit.factories import Tenant, create_tenant

GATEWAY_TOKEN = "gateway-token"  # the instance's api_token where a gateway URL is given


async def ingest(
    engine: AsyncEngine, tenant: Tenant, events: list[GatewayEvent], gateway: str = GatewayKind.EVOLUTION
) -> IngestResult:
    """`events` applied to the tenant's `gateway` instance and committed, as a webhook would."""
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        result = await IngestService(session).apply(
            org_id=tenant.org_id, instance_id=tenant.instance(gateway).id, events=events
        )
        await session.commit()
    return result


async def tenant_calling(session: AsyncSession, gateway_url: str | None) -> Tenant:
    """A new tenant whose WPPConnect instance sends and downloads through `gateway_url` (None: it has no
    gateway credentials, so a send cannot be made)."""
    tenant = await create_tenant(session)
    await session.execute(
        update(WhatsAppInstance)
        .where(WhatsAppInstance.id == tenant.instance(GatewayKind.WPPCONNECT).id)
        .values(api_base_url=gateway_url, api_token=GATEWAY_TOKEN if gateway_url else None)
    )
    await session.commit()
    return tenant


async def tenant_with_chat(
    session: AsyncSession, engine: AsyncEngine, gateway_url: str | None
) -> tuple[Tenant, UUID]:
    """`tenant_calling(gateway_url)` and the conversation one inbound text opened on its WPPConnect
    instance: (tenant, conversation id)."""
    tenant = await tenant_calling(session, gateway_url)
    result = await ingest(engine, tenant, [text_message("5511944440000", "hi")], GatewayKind.WPPCONNECT)
    return tenant, result.created[0].conversation_id


async def downloadable_image(
    session: AsyncSession, engine: AsyncEngine, gateway_url: str
) -> tuple[Tenant, UUID]:
    """A WPPConnect image message whose file is not inline: the worker must fetch it from the gateway.
    (tenant, media id)."""
    tenant = await tenant_calling(session, gateway_url)
    result = await ingest(engine, tenant, [image_message()], GatewayKind.WPPCONNECT)
    media_id = result.created[0].media_id
    assert media_id is not None
    return tenant, media_id
