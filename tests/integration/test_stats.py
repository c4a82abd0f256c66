"""/stats: admins only; figures move with known traffic."""

from __future__ import annotations

from uuid import uuid4

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AgentRole
from tests.kit.api import login
from tests.kit.data import fixture_for, post_webhook, with_message_id
from tests.kit.factories import AgentFactory, create_tenant

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


async def test_an_org_admin_sees_only_their_organisation_and_counters_follow_known_traffic(
    client: Client, session: AsyncSession
):
    tenant, other = await create_tenant(session), await create_tenant(session)
    # An admin outside the deployment admins' domain (@example.com in the test settings).
    email = f"boss-{uuid4().hex[:8]}@acme.test"
    org_admin = AgentFactory.build(org_id=tenant.org_id, role=AgentRole.ADMIN, email=email)
    session.add(org_admin)
    await session.commit()
    operator = await login(client, tenant.admin.email)  # @example.com: a deployment admin
    before = (await client.get(STATS, headers=operator)).json()

    instance = tenant.instance("evolution")
    for index in range(3):
        text = fixture_for("evolution", "v1_messages_upsert_text", instance)
        body = with_message_id("evolution", text, f"STATS{index}")
        assert (await post_webhook(client, "evolution", instance, body)).status_code == 200
    assert (await post_webhook(client, "evolution", instance, body)).status_code == 200  # a redelivery

    mine = (await client.get(STATS, headers=await login(client, org_admin.email))).json()
    assert mine["scope"] == "organisation"
    assert mine["deployment"] is None and mine["process"] is None
    assert mine["organisation"]["messages"]["persisted"] == 3
    assert mine["organisation"]["messages"]["inbound"] == 3
    assert mine["organisation"]["media"] == {"pending": 0, "ready": 0, "failed": 0, "bytes_stored": 0}
    theirs = (await client.get(STATS, headers=await login(client, other.admin.email))).json()
    assert theirs["organisation"]["messages"]["persisted"] == 0  # nothing of the other org leaks in

    after = (await client.get(STATS, headers=operator)).json()
    assert after["scope"] == "deployment"
    grown = after["deployment"]["ingest"], before["deployment"]["ingest"]
    assert grown[0]["messages_persisted"] - grown[1]["messages_persisted"] == 3
    assert grown[0]["duplicates_ignored"] - grown[1]["duplicates_ignored"] == 1
    assert grown[0]["per_gateway"]["evolution"] - grown[1].get("per_gateway", {}).get("evolution", 0) == 4
    assert after["deployment"]["messages"]["persisted"] >= 3
    assert set(after["deployment"]["queues"]) == {"default", "media"}


async def test_websocket_info_tells_how_to_connect_and_only_your_own_counts(
    client: Client, session: AsyncSession
):
    tenant = await create_tenant(session)
    info = await client.get(
        "/api/whatsapp-optimized/websocket/info", headers=await login(client, tenant.agent.email)
    )
    assert info.status_code == 200
    body = info.json()
    assert body["url_path"] == "/ws" and body["protocol"] >= 1 and body["heartbeat_s"] > 0
    assert {"subscribe", "unsubscribe", "ping"} <= set(body["client_frames"])
    assert {"message.created", "media.ready", "resync"} <= set(body["server_frames"])
    assert body["process"] == {"connections": 0, "users": 0, "rooms": 0}  # a new org: nothing of others'
    assert body["cache"]["memory_max_bytes"] > 0
    assert (await client.get("/api/whatsapp-optimized/websocket/info")).status_code == 401
