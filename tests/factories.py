"""polyfactory factories for the models, and `create_tenant`: an org, two agents, one instance per gateway."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from uuid import UUID

from polyfactory import Use
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Agent, AgentRole, GatewayKind, Organization, WhatsAppInstance
from app.domain.accounts.passwords import hash_password

PASSWORD = "correct horse battery staple"
_PASSWORD_HASH = hash_password(PASSWORD)  # hashing is deliberately slow: do it once per run


class OrganizationFactory(SQLAlchemyFactory[Organization]):
    __set_relationships__ = False
    __set_foreign_keys__ = False
    name = Use(lambda: f"Org {secrets.token_hex(3)}")
    slug = Use(lambda: f"org-{secrets.token_hex(6)}")


class AgentFactory(SQLAlchemyFactory[Agent]):
    __set_relationships__ = False
    __set_foreign_keys__ = False
    email = Use(lambda: f"agent-{secrets.token_hex(6)}@example.com")
    name = Use(lambda: f"Agent {secrets.token_hex(2)}")
    password_hash = _PASSWORD_HASH
    role = AgentRole.AGENT
    is_active = True
    token_generation = 0


class InstanceFactory(SQLAlchemyFactory[WhatsAppInstance]):
    __set_relationships__ = False
    __set_foreign_keys__ = False
    name = Use(lambda: f"inst-{secrets.token_hex(6)}")
    webhook_secret = Use(lambda: secrets.token_urlsafe(24))
    verify_token = Use(lambda: secrets.token_urlsafe(12))
    api_base_url = None
    api_token = None
    phone_number_id = Use(lambda: str(secrets.randbelow(10**15)))
    is_active = True


@dataclass
class Tenant:
    org: Organization
    admin: Agent
    agent: Agent
    instances: dict[GatewayKind, WhatsAppInstance] = field(default_factory=dict)

    @property
    def org_id(self) -> UUID:
        return self.org.id

    def instance(self, gateway: str | GatewayKind) -> WhatsAppInstance:
        return self.instances[GatewayKind(gateway)]


async def create_tenant(session: AsyncSession) -> Tenant:
    org = OrganizationFactory.build()
    session.add(org)
    await session.flush()
    admin = AgentFactory.build(org_id=org.id, role=AgentRole.ADMIN)
    agent = AgentFactory.build(org_id=org.id)
    instances = {kind: InstanceFactory.build(org_id=org.id, gateway=kind) for kind in GatewayKind}
    session.add_all([admin, agent, *instances.values()])
    await session.commit()
    # Detached, so a test that expires its session's objects keeps the tenant readable.
    for obj in (org, admin, agent, *instances.values()):
        session.expunge(obj)
    return Tenant(org=org, admin=admin, agent=agent, instances=instances)
