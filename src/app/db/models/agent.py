from __future__ import annotations

import enum
from uuid import UUID

from sqlalchemy import Boolean, ForeignKey, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base, str_enum


class AgentRole(enum.StrEnum):
    ADMIN = "admin"
    AGENT = "agent"


class Agent(Base):
    """A person who logs in to answer customers."""

    __tablename__ = "agents"

    org_id: Mapped[UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-cased
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[AgentRole] = mapped_column(
        str_enum(AgentRole, "agent_role"),
        default=AgentRole.AGENT,
    )
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Carried by every access token; a trigger bumps it whenever what a token claims stops being true (see
    # AgentRevocation), which refuses every token issued before.
    token_generation: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
