"""WhatsApp instances: creation (CLI) and the lookup every webhook starts with."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import GatewayKind, Organization, WhatsAppInstance
from app.domain.gateways.base import InstanceCredentials


class IncompleteInstance(ValueError):
    """An instance that could not safely receive webhooks as configured."""


_NAME_LENGTH: int = WhatsAppInstance.name.type.length
# C0 and C1 control characters (NUL among them, which Postgres refuses in text) and lone surrogates.
_CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_instance_name(name: str) -> bool:
    """Whether `name` can name an instance: 1 to 100 characters, none of them a control character.

    Webhooks check it before any lookup, so `/api/webhooks/wppconnect/x%00` is an unknown instance (404,
    counted as a failed verification) rather than a query Postgres refuses with a 500 (issue 12).
    """
    return 0 < len(name) <= _NAME_LENGTH and _CONTROL_OR_SURROGATE.search(name) is None


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
        if not is_instance_name(name):
            raise IncompleteInstance(
                f"an instance name has 1 to {_NAME_LENGTH} characters and no control characters"
            )
        if gateway is GatewayKind.CLOUDAPI and not (phone_number_id or "").strip():
            # One Meta app secret signs the webhooks of all the app's numbers: the phone number id is what
            # tells this instance's apart (the webhook refuses an instance without one).
            raise IncompleteInstance("a Cloud API instance needs its phone number id (--phone-number-id)")
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


@dataclass(frozen=True, slots=True)
class ReceivingInstance:
    """What a webhook needs of its instance: a plain row, loaded without the ORM on the hot path."""

    id: UUID
    org_id: UUID
    gateway: GatewayKind
    name: str
    webhook_secret: str
    verify_token: str | None
    phone_number_id: str | None


_instances = WhatsAppInstance.__table__
_FIND_ACTIVE = select(*(_instances.c[field] for field in ReceivingInstance.__dataclass_fields__)).where(
    _instances.c.gateway == bindparam("gateway"),
    _instances.c.name == bindparam("name"),
    _instances.c.is_active.is_(True),
)


async def find_receiving_instance(
    session: AsyncSession, gateway: GatewayKind, name: str
) -> ReceivingInstance | None:
    row = (await session.execute(_FIND_ACTIVE, {"gateway": gateway, "name": name})).first()
    return ReceivingInstance(**row._mapping) if row is not None else None


def credentials_of(instance: ReceivingInstance) -> InstanceCredentials:
    return InstanceCredentials(
        name=instance.name, webhook_secret=instance.webhook_secret, verify_token=instance.verify_token
    )


def webhook_url(public_base_url: str, instance: WhatsAppInstance | ReceivingInstance) -> str:
    return f"{public_base_url}/api/webhooks/{instance.gateway.value}/{instance.name}"
