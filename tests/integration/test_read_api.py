"""The read API: login, inbox list (keyset), history (seq windows), read marker, tenant isolation."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import jwt
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from tests.kit.api import login
from tests.kit.data import text_message
from tests.kit.factories import PASSWORD, create_tenant
from tests.kit.ingested import ingest

Client = AsyncTestClient[Litestar]


async def test_login_rejects_wrong_password_and_unknown_email(client: Client, session: AsyncSession):
    tenant = await create_tenant(session)
    for email, password in ((tenant.agent.email, "wrong password"), ("nobody@example.com", PASSWORD)):
        response = await client.post("/api/auth/login", json={"email": email, "password": password})
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "access_token" not in response.text


async def test_login_rejects_malformed_body(client: Client):
    response = await client.post(
        "/api/auth/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["status"] == 400


async def test_routes_require_a_valid_token(client: Client, session: AsyncSession, settings: Settings):
    tenant = await create_tenant(session)
    assert (await client.get("/api/whatsapp-optimized/conversations")).status_code == 401

    claims = {"sub": str(tenant.agent.id), "org_id": str(tenant.org_id), "role": "agent"}
    expired = jwt.encode(
        {
            **claims,
            "exp": datetime.now(UTC) - timedelta(minutes=1),
            "iat": datetime.now(UTC) - timedelta(hours=1),
        },
        settings.auth.jwt_secret,
        algorithm="HS256",
    )
    forged = jwt.encode(
        {**claims, "exp": datetime.now(UTC) + timedelta(hours=1)},
        "not-the-server-secret-but-long-enough-for-hs256",
        algorithm="HS256",
    )
    for token in (expired, forged, "garbage"):
        response = await client.get(
            "/api/whatsapp-optimized/conversations", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, token
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_conversation_list_orders_by_activity_and_pages_by_cursor(
    client: Client, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    base = datetime.now(UTC) - timedelta(hours=1)
    for i in range(7):
        await ingest(
            engine,
            tenant,
            [text_message(f"55119000000{i:02d}", f"hi {i}", sent_at=base + timedelta(minutes=i))],
        )
    headers = await login(client, tenant.agent.email)

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (
            await client.get("/api/whatsapp-optimized/conversations", params=params, headers=headers)
        ).json()
        seen += [item["last_message_preview"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"hi {i}" for i in reversed(range(7))]


async def test_conversation_filters(client: Client, session: AsyncSession, engine: AsyncEngine):
    tenant = await create_tenant(session)
    await ingest(engine, tenant, [text_message("5511000000001", "unread")])
    await ingest(engine, tenant, [text_message("5511000000002", "to be read")])
    headers = await login(client, tenant.agent.email)
    listing = (await client.get("/api/whatsapp-optimized/conversations", headers=headers)).json()["items"]
    read_id = next(c["id"] for c in listing if c["last_message_preview"] == "to be read")
    marked = await client.post(f"/api/whatsapp-optimized/conversations/{read_id}/read", headers=headers)
    assert marked.status_code == 200 and marked.json()["unread_count"] == 0

    unread = (
        await client.get("/api/whatsapp-optimized/conversations", params={"unread": "true"}, headers=headers)
    ).json()["items"]
    assert [c["last_message_preview"] for c in unread] == ["unread"]
    other_instance = (
        await client.get(
            "/api/whatsapp-optimized/conversations",
            params={"instance_id": str(tenant.instance("wppconnect").id)},
            headers=headers,
        )
    ).json()["items"]
    assert other_instance == []
    by_status = (
        await client.get(
            "/api/whatsapp-optimized/conversations", params={"status": "closed"}, headers=headers
        )
    ).json()["items"]
    assert by_status == []


async def test_history_walks_1000_messages_both_ways_without_gap_or_repeat(
    client: Client, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    await ingest(engine, tenant, [text_message("5511000001000", f"m{i}") for i in range(1000)])
    headers = await login(client, tenant.agent.email)
    conversation_id = (await client.get("/api/whatsapp-optimized/conversations", headers=headers)).json()[
        "items"
    ][0]["id"]
    url = f"/api/whatsapp-optimized/messages/{conversation_id}"

    backwards: list[int] = []
    page = (await client.get(url, params={"limit": 100}, headers=headers)).json()
    assert page["last_seq"] == 1000 and page["has_more_after"] is False
    while True:
        backwards = [m["seq"] for m in page["items"]] + backwards
        if not page["has_more_before"]:
            break
        page = (
            await client.get(
                url, params={"limit": 100, "before_seq": page["items"][0]["seq"]}, headers=headers
            )
        ).json()
    assert backwards == list(range(1, 1001))

    forwards: list[int] = []
    after = 0
    while True:
        page = (await client.get(url, params={"limit": 100, "after_seq": after}, headers=headers)).json()
        forwards += [m["seq"] for m in page["items"]]
        if not page["has_more_after"]:
            break
        after = page["items"][-1]["seq"]
    assert forwards == list(range(1, 1001))
    assert "total" not in page


async def test_history_rejects_bad_paging_input(client: Client, session: AsyncSession, engine: AsyncEngine):
    tenant = await create_tenant(session)
    await ingest(engine, tenant, [text_message("5511000002000", "x")])
    headers = await login(client, tenant.agent.email)
    conversation_id = (await client.get("/api/whatsapp-optimized/conversations", headers=headers)).json()[
        "items"
    ][0]["id"]
    url = f"/api/whatsapp-optimized/messages/{conversation_id}"
    for params in ({"limit": 101}, {"limit": 0}, {"before_seq": 5, "after_seq": 1}, {"before_seq": "x"}):
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 400, params
        assert response.headers["content-type"].startswith("application/problem+json")
    bad_cursor = await client.get(
        "/api/whatsapp-optimized/conversations", params={"cursor": "!!"}, headers=headers
    )
    assert bad_cursor.status_code == 400


async def test_other_organisations_conversation_is_404(
    client: Client, session: AsyncSession, engine: AsyncEngine
):
    ours, theirs = await create_tenant(session), await create_tenant(session)
    await ingest(engine, theirs, [text_message("5511000003000", "secret business")])
    their_headers = await login(client, theirs.agent.email)
    their_id = (await client.get("/api/whatsapp-optimized/conversations", headers=their_headers)).json()[
        "items"
    ][0]["id"]
    headers = await login(client, ours.agent.email)

    listing = (await client.get("/api/whatsapp-optimized/conversations", headers=headers)).json()
    assert listing["items"] == []
    for method, url in (
        ("GET", f"/api/whatsapp-optimized/messages/{their_id}"),
        ("GET", f"/api/whatsapp-optimized/conversations/{their_id}"),
        ("POST", f"/api/whatsapp-optimized/conversations/{their_id}/read"),
        ("GET", f"/api/whatsapp-optimized/messages/{uuid4()}"),
    ):
        response = await client.request(method, url, headers=headers)
        assert response.status_code == 404, url
        assert "secret business" not in response.text
    # and the read marker above changed nothing for its owner
    theirs_after = (await client.get("/api/whatsapp-optimized/conversations", headers=their_headers)).json()
    assert theirs_after["items"][0]["unread_count"] == 1


async def test_openapi_schema_is_served(client: Client):
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/whatsapp-optimized/conversations" in paths
    assert "/api/whatsapp-optimized/messages/{conversation_id}" in paths


async def test_login_attempts_are_rate_limited_per_client(settings: Settings, session: AsyncSession):
    from dataclasses import replace

    from app.server.core import create_app

    tenant = await create_tenant(session)
    # A key prefix of its own: the counter lives in Redis, shared with every other test's app.
    strict = replace(
        settings,
        auth=replace(settings.auth, login_attempts_per_minute=3),
        redis=replace(settings.redis, key_prefix=f"rate-test-{secrets.token_hex(4)}"),
    )
    async with AsyncTestClient(app=create_app(strict)) as client:
        codes = [
            (
                await client.post("/api/auth/login", json={"email": tenant.agent.email, "password": "wrong"})
            ).status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        limited = await client.post(
            "/api/auth/login", json={"email": tenant.agent.email, "password": PASSWORD}
        )
        assert limited.status_code == 429
        assert limited.headers["content-type"].startswith("application/problem+json")
