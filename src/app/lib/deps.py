"""Named dependency types shared by controllers (Litestar 2.25 wants injected fields marked explicitly)."""

from __future__ import annotations

from litestar.di import NamedDependency
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

DbSession = NamedDependency[AsyncSession]  # the request's session, from advanced-alchemy's SQLAlchemyPlugin
RedisClient = NamedDependency[Redis]
