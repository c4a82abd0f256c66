"""Organisations and agents: creation (CLI, demo data) and login."""

from __future__ import annotations

import re

import anyio
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from app.db.models import Agent, AgentRole, Organization
from app.domain.accounts.passwords import DUMMY_HASH, hash_password, verify_password_off_loop

_SLUG_INVALID = re.compile(r"[^a-z0-9]+")


def slugify(name: str) -> str:
    return _SLUG_INVALID.sub("-", name.lower()).strip("-") or "org"


class OrganizationService(SQLAlchemyAsyncRepositoryService[Organization]):
    class Repository(SQLAlchemyAsyncRepository[Organization]):
        model_type = Organization

    repository_type = Repository

    async def create_organization(self, name: str, slug: str | None = None) -> Organization:
        return await self.create(Organization(name=name, slug=slug or slugify(name)))


class AgentService(SQLAlchemyAsyncRepositoryService[Agent]):
    class Repository(SQLAlchemyAsyncRepository[Agent]):
        model_type = Agent

    repository_type = Repository

    async def create_agent(
        self, *, org: Organization, email: str, name: str, password: str, role: AgentRole = AgentRole.AGENT
    ) -> Agent:
        password_hash = await anyio.to_thread.run_sync(hash_password, password)
        return await self.create(
            Agent(
                org_id=org.id, email=email.strip().lower(), name=name, password_hash=password_hash, role=role
            )
        )

    async def set_active(self, email: str, active: bool) -> Agent:
        """Deactivating refuses every token the agent holds, on every process (migration 0005's trigger)."""
        agent = await self.get_one(email=email.strip().lower())
        return await self.update({"is_active": active}, item_id=agent.id)

    async def sign_out_everywhere(self, email: str) -> Agent:
        """Refuse every token issued to the agent so far; the next login works as usual."""
        agent = await self.get_one(email=email.strip().lower())
        return await self.update({"token_generation": agent.token_generation + 1}, item_id=agent.id)

    async def authenticate(self, email: str, password: str) -> Agent | None:
        """The agent with these credentials, or None; as slow for an unknown e-mail as for a bad password."""
        agent = await self.get_one_or_none(email=email.strip().lower())
        # End the read's transaction before hashing: its pooled connection goes back to ingest's pool while
        # scrypt runs (issue 12, finding 1b). The agent is detached first, so the rollback does not expire it.
        if agent is not None:
            self.repository.session.expunge(agent)
        await self.repository.session.rollback()
        stored = agent.password_hash if agent is not None else DUMMY_HASH
        valid = await verify_password_off_loop(password, stored)
        if agent is None or not valid or not agent.is_active:
            return None
        return agent
