from __future__ import annotations

import enum
from uuid import UUID

from sqlalchemy import Boolean, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base, str_enum


class GatewayKind(enum.StrEnum):
    WPPCONNECT = "wppconnect"
    EVOLUTION = "evolution"
    CLOUDAPI = "cloudapi"


class WhatsAppInstance(Base):
    """One WhatsApp number behind one gateway; its webhooks arrive at /api/webhooks/{gateway}/{name}."""

    __tablename__ = "whatsapp_instances"
    __table_args__ = (UniqueConstraint("gateway", "name", name="uq_whatsapp_instances_gateway_name"),)

    org_id: Mapped[UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    gateway: Mapped[GatewayKind] = mapped_column(str_enum(GatewayKind, "gateway_kind"))
    name: Mapped[str] = mapped_column(String(100))
    # WPPConnect/Evolution: the shared token the gateway sends; Cloud API: the app secret behind the HMAC.
    webhook_secret: Mapped[str] = mapped_column(String(255))
    # Cloud API only: the token Meta echoes in the GET hub.verify_token handshake.
    verify_token: Mapped[str | None] = mapped_column(String(255), default=None)
    # For sending and fetching media: gateway base URL, its API token, and Cloud API's phone number id.
    api_base_url: Mapped[str | None] = mapped_column(String(500), default=None)
    api_token: Mapped[str | None] = mapped_column(String(1000), default=None)
    phone_number_id: Mapped[str | None] = mapped_column(String(64), default=None)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
