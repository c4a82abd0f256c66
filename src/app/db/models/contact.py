from __future__ import annotations

from uuid import UUID

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base


class Contact(Base):
    """A customer (or a group) as WhatsApp knows it, by its normalised WhatsApp id."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("org_id", "wa_id", name="uq_contacts_org_wa_id"),)

    org_id: Mapped[UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    wa_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
