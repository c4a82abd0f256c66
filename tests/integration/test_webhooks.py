"""Webhook ingest over HTTP for each gateway: messages, media, own messages, statuses, and concurrency."""

from __future__ import annotations

import asyncio

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Conversation, Media, Message
from tests.kit.data import fixture_for, post_webhook, with_message_id
from tests.kit.factories import Tenant, create_tenant

Client = AsyncTestClient[Litestar]

TEXT_FIXTURES = {
    "wppconnect": "onmessage_text",
    "evolution": "v2_messages_upsert_text",
    "cloudapi": "inbound_text",
}
MEDIA_FIXTURES = [
    ("wppconnect", "onmessage_image_base64", "image", True),
    ("wppconnect", "onmessage_ptt", "audio", False),
    ("wppconnect", "onmessage_document_base64", "document", True),
    ("wppconnect", "onmessage_video", "video", False),
    ("wppconnect", "onmessage_sticker", "sticker", False),
    ("evolution", "v2_messages_upsert_image_base64", "image", True),
    ("evolution", "v2_messages_upsert_audio", "audio", False),
    ("evolution", "v2_messages_upsert_video", "video", False),
    ("evolution", "v2_messages_upsert_document_base64", "document", True),
    ("evolution", "v1_messages_upsert_document_wrapped", "document", True),
    ("evolution", "v2_messages_upsert_sticker", "sticker", False),
    ("cloudapi", "inbound_image", "image", False),
    ("cloudapi", "inbound_audio", "audio", False),
    ("cloudapi", "inbound_video", "video", False),
    ("cloudapi", "inbound_document", "document", False),
    ("cloudapi", "inbound_sticker", "sticker", False),
]
OWN_MESSAGE_FIXTURES = {
    "wppconnect": "onselfmessage_text",
    "evolution": "v2_messages_upsert_from_me",
    "cloudapi": "smb_message_echoes",
}


async def messages_of(session: AsyncSession, tenant: Tenant) -> list[Message]:
    session.expire_all()
    return list((await session.scalars(select(Message).where(Message.org_id == tenant.org_id))).all())


@pytest.mark.parametrize("gateway", TEXT_FIXTURES)
async def test_text_message_is_persisted_before_200(client: Client, session: AsyncSession, gateway: str):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    response = await post_webhook(
        client, gateway, instance, fixture_for(gateway, TEXT_FIXTURES[gateway], instance)
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "created": 1, "duplicates": 0, "statuses": 0, "ignored": 0}
    [message] = await messages_of(session, tenant)
    assert (message.direction.value, message.type.value, message.seq, message.status.value) == (
        "inbound",
        "text",
        1,
        "received",
    )
    assert message.body and message.raw
    conversation = await session.get(Conversation, message.conversation_id)
    assert conversation is not None and conversation.unread_count == 1


@pytest.mark.parametrize(("gateway", "fixture", "kind", "inline"), MEDIA_FIXTURES)
async def test_media_message_creates_pending_media_row(
    client: Client, session: AsyncSession, gateway: str, fixture: str, kind: str, inline: bool
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    response = await post_webhook(client, gateway, instance, fixture_for(gateway, fixture, instance))

    assert response.status_code == 200, response.text
    [message] = await messages_of(session, tenant)
    assert message.type.value == kind
    media = (
        await session.execute(
            select(Media.state, Media.gateway_ref, Media.inline_base64).where(Media.message_id == message.id)
        )
    ).one()
    assert media.state.value == "pending" and media.gateway_ref
    assert (media.inline_base64 is not None) is inline


@pytest.mark.parametrize("gateway", OWN_MESSAGE_FIXTURES)
async def test_message_sent_from_the_phone_is_outbound(client: Client, session: AsyncSession, gateway: str):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    response = await post_webhook(
        client, gateway, instance, fixture_for(gateway, OWN_MESSAGE_FIXTURES[gateway], instance)
    )

    assert response.status_code == 200, response.text
    [message] = await messages_of(session, tenant)
    assert message.direction.value == "outbound"
    assert message.status.value in ("sent", "delivered", "read")
    conversation = await session.get(Conversation, message.conversation_id)
    assert conversation is not None and conversation.unread_count == 0


STATUS_CASES = [
    # gateway, own-message fixture, status fixture, how to point the status at the message, expected status
    ("wppconnect", "onselfmessage_text", "onack_delivered", "delivered"),
    ("evolution", "v2_messages_upsert_from_me", "v2_messages_update_read", "read"),
    ("cloudapi", "smb_message_echoes", "status_delivered", "delivered"),
]


def _status_for(gateway: str, status: dict, message_id: str) -> dict:
    if gateway == "wppconnect":
        status["id"]["_serialized"] = message_id
        status["id"]["id"] = message_id.rsplit("_", 1)[-1]
        status["id"]["fromMe"] = True
    elif gateway == "evolution":
        status["data"]["keyId"] = message_id
    else:
        status["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = message_id
    return status


@pytest.mark.parametrize(("gateway", "own_fixture", "status_fixture", "expected"), STATUS_CASES)
async def test_delivery_status_updates_own_message(
    client: Client, session: AsyncSession, gateway: str, own_fixture: str, status_fixture: str, expected: str
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    await post_webhook(client, gateway, instance, fixture_for(gateway, own_fixture, instance))
    [message] = await messages_of(session, tenant)
    # The business's own messages start "sent"; receipts may only move them forward.
    assert message.status.value == "sent"
    status = _status_for(gateway, fixture_for(gateway, status_fixture, instance), message.gateway_message_id)

    response = await post_webhook(client, gateway, instance, status)
    assert response.status_code == 200, response.text
    assert response.json()["statuses"] == 1
    [updated] = await messages_of(session, tenant)
    assert updated.status.value == expected

    again = await post_webhook(client, gateway, instance, status)
    assert again.status_code == 200 and again.json()["statuses"] == 0


@pytest.mark.parametrize("gateway", TEXT_FIXTURES)
async def test_unknown_event_is_acknowledged_and_ignored(client: Client, session: AsyncSession, gateway: str):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    body = {
        "wppconnect": {"event": "onpresencechanged", "session": instance.name, "id": "x"},
        "evolution": {"event": "connection.update", "instance": instance.name, "data": {"state": "open"}},
        "cloudapi": {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "1", "changes": [{"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}]}
            ],
        },
    }[gateway]
    response = await post_webhook(client, gateway, instance, body)
    assert response.status_code == 200, response.text
    assert response.json()["ignored"] == 1
    assert await messages_of(session, tenant) == []


@pytest.mark.parametrize("gateway", TEXT_FIXTURES)
async def test_duplicate_delivered_ten_times_concurrently_is_one_row(
    client: Client, session: AsyncSession, gateway: str
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    data = fixture_for(gateway, TEXT_FIXTURES[gateway], instance)
    responses = await asyncio.gather(*(post_webhook(client, gateway, instance, data) for _ in range(10)))

    assert [r.status_code for r in responses] == [200] * 10
    assert sum(r.json()["created"] for r in responses) == 1
    assert sum(r.json()["duplicates"] for r in responses) == 9
    assert len(await messages_of(session, tenant)) == 1


async def test_200_concurrent_webhooks_into_one_conversation_get_seq_1_to_200(
    client: Client, session: AsyncSession
):
    tenant = await create_tenant(session)
    gateway = "evolution"
    instance = tenant.instance(gateway)
    base = fixture_for(gateway, TEXT_FIXTURES[gateway], instance)
    bodies = [with_message_id(gateway, base, f"3EB0CONC{i:06d}", text=f"message {i}") for i in range(200)]
    responses = await asyncio.gather(*(post_webhook(client, gateway, instance, body) for body in bodies))

    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    messages = await messages_of(session, tenant)
    assert sorted(m.seq for m in messages) == list(range(1, 201))
    assert len({m.conversation_id for m in messages}) == 1
    conversation = await session.get(Conversation, messages[0].conversation_id)
    assert conversation is not None and (conversation.last_seq, conversation.unread_count) == (200, 200)


async def test_cloudapi_batch_with_messages_and_statuses_is_one_transaction(
    client: Client, session: AsyncSession
):
    tenant = await create_tenant(session)
    instance = tenant.instance("cloudapi")
    data = fixture_for("cloudapi", "batch_messages_and_statuses", instance)
    response = await post_webhook(client, "cloudapi", instance, data)
    assert response.status_code == 200, response.text
    created = response.json()["created"]
    assert created >= 2
    assert len(await messages_of(session, tenant)) == created


async def test_cloudapi_subscription_handshake(client: Client, session: AsyncSession):
    tenant = await create_tenant(session)
    instance = tenant.instance("cloudapi")
    url = f"/api/webhooks/cloudapi/{instance.name}"
    ok = await client.get(
        url,
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": instance.verify_token,
            "hub.challenge": "1158201444",
        },
    )
    assert ok.status_code == 200 and ok.text == "1158201444"
    wrong = await client.get(
        url, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1158201444"}
    )
    assert wrong.status_code == 401 and "1158201444" not in wrong.text
    unknown = await client.get(
        "/api/webhooks/cloudapi/no-such-instance", params={"hub.mode": "subscribe", "hub.challenge": "1"}
    )
    assert unknown.status_code == 404
