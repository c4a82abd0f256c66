"""WhatsApp instances: creation (CLI) and the lookup every webhook starts with."""

from __future__ import annotations

import secrets

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from app.db.models import GatewayKind, Organization, WhatsAppInstance
from app.domain.gateways.base import InstanceCredentials


class InstanceService(SQLAlchemyAsyncRepositoryService[WhatsAppInstance]):
    class Repository(SQLAlchemyAsyncRepository[WhatsAppInstance]):
        model_type = WhatsAppInstance

    repository_type = Repository

    async def create_instance(
        self,
        *,
        org: Organization,
        gateway: GatewayKind,
        name: str,
        webhook_secret: str | None = None,
        verify_token: str | None = None,
        api_base_url: str | None = None,
        api_token: str | None = None,
        phone_number_id: str | None = None,
    ) -> WhatsAppInstance:
        return await self.create(
            WhatsAppInstance(
                org_id=org.id,
                gateway=gateway,
                name=name,
                webhook_secret=webhook_secret or secrets.token_urlsafe(32),
                verify_token=verify_token
                or (secrets.token_urlsafe(24) if gateway is GatewayKind.CLOUDAPI else None),
                api_base_url=api_base_url,
                api_token=api_token,
                phone_number_id=phone_number_id,
            )
        )

    async def find_active(self, gateway: GatewayKind, name: str) -> WhatsAppInstance | None:
        return await self.get_one_or_none(gateway=gateway, name=name, is_active=True)


def credentials_of(instance: WhatsAppInstance) -> InstanceCredentials:
    return InstanceCredentials(
        name=instance.name, webhook_secret=instance.webhook_secret, verify_token=instance.verify_token
    )


def webhook_url(public_base_url: str, instance: WhatsAppInstance) -> str:
    return f"{public_base_url}/api/webhooks/{instance.gateway.value}/{instance.name}"
