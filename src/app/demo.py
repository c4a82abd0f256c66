"""Demo data for a first look: an org, an admin who can log in, one instance per gateway, a few chats.

The chats go through the same IngestService as webhooks, so what the demo shows is what ingest writes.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AgentRole, Direction, GatewayKind, MessageStatus, MessageType
from app.domain.accounts.services import AgentService, OrganizationService
from app.domain.conversations.ingest import IngestService
from app.domain.gateways.events import InboundMessage
from app.domain.gateways.instances import InstanceService

_CHATS = [
    ("5511987654321", "Maria Silva", ["Olá! Gostaria de agendar uma consulta.", "Pode ser amanhã às 10h?"]),
    ("5521912345678", "João Souza", ["Meu pedido ainda não chegou", "Número 4821"]),
    ("16505551234", "Sheena Nelson", ["Does it come in another color?"]),
]


async def create_demo_data(session: AsyncSession) -> dict[str, Any]:
    suffix = secrets.token_hex(3)
    org = await OrganizationService(session=session).create_organization(f"Demo {suffix}", f"demo-{suffix}")
    password = secrets.token_urlsafe(12)
    email = f"admin-{suffix}@demo.local"
    await AgentService(session=session).create_agent(
        org=org, email=email, name="Demo Admin", password=password, role=AgentRole.ADMIN
    )
    instances = [
        await InstanceService(session=session).create_instance(
            org=org, gateway=kind, name=f"demo-{kind.value}-{suffix}", phone_number_id=f"10654{suffix}{i}"
        )
        for i, kind in enumerate(GatewayKind)
    ]
    ingest = IngestService(session)
    start = datetime.now(UTC) - timedelta(hours=1)
    for index, (wa_id, name, texts) in enumerate(_CHATS):
        instance = instances[index % len(instances)]
        events = [
            InboundMessage(
                gateway_message_id=f"demo-{suffix}-{index}-{n}",
                chat_id=wa_id,
                contact_name=name,
                direction=Direction.INBOUND,
                type=MessageType.TEXT,
                body=text,
                sent_at=start + timedelta(minutes=10 * index + n),
                status=MessageStatus.RECEIVED,
                raw={"demo": True},
            )
            for n, text in enumerate(texts)
        ]
        await ingest.apply(org_id=org.id, instance_id=instance.id, events=events)
    return {
        "organization": {"id": str(org.id), "slug": org.slug},
        "login": {"email": email, "password": password},
        "instances": [],
        "_instances": instances,
    }
