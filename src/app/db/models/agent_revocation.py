from __future__ import annotations

from datetime import datetime
from uuid import UUID

from advanced_alchemy.base import orm_registry
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import Integer, func
from sqlalchemy.orm import Mapped, mapped_column

# A plain table (no surrogate id, no audit columns): rows are written by the agents triggers of migration
# 0005, keyed by the agent so a deleted agent keeps its row.
_PlainBase = orm_registry.generate_base()

# The generation a deleted agent's row carries: above any token's, so every token of theirs is refused.
DELETED_GENERATION = 2**31 - 1


class AgentRevocation(_PlainBase):  # type: ignore[misc,valid-type]
    """The lowest token generation an agent's tokens must carry, since the agent was last deactivated,
    demoted, moved, renamed, given a new password or deleted. Only the database triggers write here; every API
    process loads the recent rows and hears new ones (LISTEN crm_token_revocations)."""

    __tablename__ = "agent_revocations"

    agent_id: Mapped[UUID] = mapped_column(primary_key=True)  # no foreign key: a deleted agent stays here
    org_id: Mapped[UUID]
    generation: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[datetime] = mapped_column(
        DateTimeUTC(timezone=True), server_default=func.now(), index=True
    )
