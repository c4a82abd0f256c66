"""Bad webhook input: a clear 4xx problem, nothing written, no secret in the answer or the logs."""

from __future__ import annotations

import json

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db.models import Contact, Conversation, Message
from app.server.core import create_app
from tests.kit.data import fixture_for, post_webhook, signed_headers
from tests.kit.factories import Tenant, create_tenant

Client = AsyncTestClient[Litestar]
GATEWAYS = ["wppconnect", "evolution", "cloudapi"]
TEXT = {"wppconnect": "onmessage_text", "evolution": "v2_messages_upsert_text", "cloudapi": "inbound_text"}


async def rows_of(session: AsyncSession, tenant: Tenant) -> tuple[int, int, int]:
    counts = []
    for model in (Message, Conversation, Contact):
        counts.append(
            await session.scalar(select(func.count()).select_from(model).where(model.org_id == tenant.org_id))
        )
    return tuple(counts)  # type: ignore[return-value]


def assert_problem(response, status: int, *secrets: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status and problem["title"]
    for secret in secrets:
        assert secret not in response.text


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_malformed_json_is_400(client: Client, session: AsyncSession, gateway: str):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    response = await post_webhook(client, gateway, instance, b'{"event": "onmessage", ')
    assert_problem(response, 400, instance.webhook_secret)
    assert await rows_of(session, tenant) == (0, 0, 0)


@pytest.mark.parametrize("gateway", GATEWAYS)
@pytest.mark.parametrize("body", [b"[]", b'{"event": 3}', b'"text"', b'{"entry": "x", "object": 1}'])
async def test_wrong_shape_is_422(client: Client, session: AsyncSession, gateway: str, body: bytes):
    tenant = await create_tenant(session)
    response = await post_webhook(client, gateway, tenant.instance(gateway), body)
    assert_problem(response, 422)
    assert await rows_of(session, tenant) == (0, 0, 0)


@pytest.mark.parametrize("gateway", ["wppconnect", "evolution"])
async def test_message_without_id_is_422(client: Client, session: AsyncSession, gateway: str):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    data = fixture_for(gateway, TEXT[gateway], instance)
    if gateway == "wppconnect":
        del data["id"]
    else:
        del data["data"]["key"]["id"]
    assert_problem(await post_webhook(client, gateway, instance, data), 422)
    assert await rows_of(session, tenant) == (0, 0, 0)


async def test_unknown_gateway_is_404(client: Client, session: AsyncSession):
    tenant = await create_tenant(session)
    response = await client.post(f"/api/webhooks/telegram/{tenant.instance('evolution').name}", content=b"{}")
    assert_problem(response, 404)


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_unknown_instance_is_404(client: Client, session: AsyncSession, gateway: str):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    body = json.dumps(fixture_for(gateway, TEXT[gateway], instance)).encode()
    response = await client.post(
        f"/api/webhooks/{gateway}/no-such-instance",
        content=body,
        headers=signed_headers(gateway, body, instance),
    )
    assert_problem(response, 404)
    assert await rows_of(session, tenant) == (0, 0, 0)


@pytest.mark.parametrize("gateway", GATEWAYS)
@pytest.mark.parametrize("credential", ["missing", "wrong"])
async def test_missing_or_wrong_secret_or_signature_is_401(
    client: Client, session: AsyncSession, gateway: str, credential: str, capsys: pytest.CaptureFixture[str]
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    data = fixture_for(gateway, TEXT[gateway], instance)
    data.pop("apikey", None)
    body = json.dumps(data).encode()
    headers = {"content-type": "application/json"}
    if credential == "wrong":
        headers |= {"x-webhook-secret": "not-the-secret", "x-hub-signature-256": "sha256=" + "0" * 64}
    response = await client.post(f"/api/webhooks/{gateway}/{instance.name}", content=body, headers=headers)
    assert_problem(response, 401, instance.webhook_secret)
    assert await rows_of(session, tenant) == (0, 0, 0)
    assert instance.webhook_secret not in capsys.readouterr().out


async def test_secret_of_another_instance_is_401(client: Client, session: AsyncSession):
    ours, theirs = await create_tenant(session), await create_tenant(session)
    instance = ours.instance("evolution")
    data = fixture_for("evolution", TEXT["evolution"], instance)
    data.pop("apikey", None)
    response = await post_webhook(
        client,
        "evolution",
        instance,
        data,
        headers={
            "content-type": "application/json",
            "x-webhook-secret": theirs.instance("evolution").webhook_secret,
        },
    )
    assert_problem(response, 401)
    assert await rows_of(session, ours) == (0, 0, 0)


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_payload_addressed_to_another_organisations_instance_is_422(
    client: Client, session: AsyncSession, gateway: str
):
    """Our secret, but the payload says it is for their account: refused whole, nothing written anywhere."""
    ours, theirs = await create_tenant(session), await create_tenant(session)
    data = fixture_for(gateway, TEXT[gateway], theirs.instance(gateway))
    response = await post_webhook(client, gateway, ours.instance(gateway), data)
    assert_problem(response, 422)
    assert await rows_of(session, ours) == (0, 0, 0)
    assert await rows_of(session, theirs) == (0, 0, 0)


async def test_oversized_body_is_413(settings: Settings, session: AsyncSession):
    from dataclasses import replace

    small = replace(settings, app=replace(settings.app, webhook_max_body_bytes=4096))
    tenant = await create_tenant(session)
    instance = tenant.instance("wppconnect")
    data = fixture_for("wppconnect", TEXT["wppconnect"], instance)
    data["body"] = "x" * 5000
    async with AsyncTestClient(app=create_app(small)) as client:
        response = await post_webhook(client, "wppconnect", instance, data)
        assert_problem(response, 413)
        # a body under the limit still goes through
        data["body"] = "short"
        assert (await post_webhook(client, "wppconnect", instance, data)).status_code == 200
    assert (await rows_of(session, tenant))[0] == 1


async def test_database_down_is_503_never_2xx(settings: Settings, session: AsyncSession):
    from dataclasses import replace

    tenant = await create_tenant(session)
    instance = tenant.instance("wppconnect")
    # Port 9 (discard) on loopback: nothing listens, so every connection is refused.
    down = replace(settings, db=replace(settings.db, url="postgresql+asyncpg://postgres@127.0.0.1:9/nowhere"))
    async with AsyncTestClient(app=create_app(down)) as client:
        response = await post_webhook(
            client, "wppconnect", instance, fixture_for("wppconnect", TEXT["wppconnect"], instance)
        )
    assert_problem(response, 503, instance.webhook_secret)
    assert response.headers["retry-after"]
    assert await rows_of(session, tenant) == (0, 0, 0)
