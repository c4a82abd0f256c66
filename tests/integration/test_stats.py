"""/stats: admins only; figures move with known traffic."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import create_tenant
from tests.integration.test_read_api import login

Client = AsyncTestClient[Litestar]
STATS = "/api/whatsapp-optimized/stats"


async def test_stats_is_for_admins_only(client: Client, session: AsyncSession):
    tenant = await create_tenant(session)
    assert (await client.get(STATS)).status_code == 401
    agent = await client.get(STATS, headers=await login(client, tenant.agent.email))
    assert agent.status_code == 403
    assert agent.headers["content-type"].startswith("application/problem+json")


async def test_stats_count_inbox_reads_per_layer(client: Client, session: AsyncSession):
    tenant = await create_tenant(session)
    headers = await login(client, tenant.admin.email)

    async def figures() -> dict:
        response = await client.get(STATS, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    before = await figures()
    for _ in range(3):
        assert (await client.get("/api/whatsapp-optimized/conversations", headers=headers)).status_code == 200
    after = await figures()

    cache_before, cache_after = before["process"]["cache"], after["process"]["cache"]
    assert cache_after["postgres_loads"] - cache_before["postgres_loads"] == 1  # one miss, then hits
    reads_from_cache = (cache_after["memory"]["hits"] - cache_before["memory"]["hits"]) + (
        cache_after["redis"]["hits"] - cache_before["redis"]["hits"]
    )
    assert reads_from_cache == 2
    assert cache_after["memory"]["bytes"] <= cache_after["memory"]["max_bytes"]
    assert after["process"]["database_statements"] > 0
    assert isinstance(after["cache_redis"], dict)
