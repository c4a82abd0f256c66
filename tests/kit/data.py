"""The data tests and benchmarks build: one settings builder and the environment a child process needs to
read the same settings back, gateway events as the adapters produce them, and webhooks as each gateway
posts them (from tests/fixtures/gateways/). Issue 14: five settings builders and three webhook builders
stood apart in the tests and benches.

`env_for` writes what `Settings.to_env` derives from the fields' own variable names (app.config), so a
new setting needs nothing here; a test checks the round trip.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import hmac
import io
import json
import os
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from httpx import Response
from litestar import Litestar
from litestar.testing import AsyncTestClient
from PIL import Image
from polyfactory import Use
from polyfactory.factories.msgspec_factory import MsgspecFactory

from app.config import AppSettings, AuthSettings, DatabaseSettings, RedisSettings, Settings
from app.db.models import Direction, MessageStatus, MessageType, WhatsAppInstance
from app.domain.gateways.events import InboundMessage, MediaRef, StatusUpdate
from tests.fixtures import load_fixture_json

# -- settings ------------------------------------------------------------------------------------------


def make_settings(
    database_url: str,
    redis_url: str | None = None,
    *,
    environment: str = "bench",
    key_prefix: str = "crm-bench",
    log_level: str = "WARNING",
    **sections: dict[str, Any],
) -> Settings:
    """Production defaults but for JSON logs at `log_level`, a fresh JWT secret, tokens valid an hour, a
    pool of 20 (+10), and a Redis key prefix of the run's own (`key_prefix`-<random>); `sections` change
    fields of a section by name, e.g. `auth={"deployment_admins": ["@example.com"]}`."""
    settings = Settings(
        app=AppSettings(environment=environment, log_level=log_level, log_json=True),
        db=DatabaseSettings(url=database_url, pool_size=20, max_overflow=10),
        redis=RedisSettings(
            url=redis_url or os.environ["REDIS_URL"], key_prefix=f"{key_prefix}-{secrets.token_hex(4)}"
        ),
        auth=AuthSettings(jwt_secret=secrets.token_urlsafe(32), token_ttl_seconds=3600),
    )
    changed = {
        name: dataclasses.replace(getattr(settings, name), **fields) for name, fields in sections.items()
    }
    return dataclasses.replace(settings, **changed)


def env_for(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a child process whose `Settings.from_env()` equals `settings` (but for the
    login limit, raised: all test logins come from 127.0.0.1 and count in the shared Redis). Every variable
    comes from the settings' own field list (`Settings.to_env`): no names written here."""
    # uvicorn reads UVICORN_* and WEB_CONCURRENCY itself: inherited ones could change host, port or workers.
    env = {k: v for k, v in os.environ.items() if not k.startswith("UVICORN_") and k != "WEB_CONCURRENCY"}
    # Unset ones are written as "", which reads as unset and keeps a developer's ./.env from filling them in.
    env.update(settings.to_env())
    env.update(
        LOGIN_ATTEMPTS_PER_MINUTE="100000",
        PYTHONUNBUFFERED="1",  # logs() sees lines as they are written, and a SIGKILL loses none
    )
    env.update(overrides)
    return env


# -- gateway events, as the adapters produce them -------------------------------------------------------


class InboundMessageFactory(MsgspecFactory[InboundMessage]):
    """An inbound text message from one contact, with a fresh gateway message id."""

    gateway_message_id = Use(lambda: f"MSG{secrets.token_hex(8).upper()}")
    chat_id = "5511999990000"
    contact_name = "Customer"
    direction = Direction.INBOUND
    type = MessageType.TEXT
    body = "hello"
    sent_at = Use(lambda: datetime.now(UTC))
    status = MessageStatus.RECEIVED
    media = None
    account = None


def text_message(
    chat_id: str = "5511999990000",
    body: str = "hello",
    *,
    gateway_message_id: str | None = None,
    direction: Direction = Direction.INBOUND,
    contact_name: str | None = "Customer",
    sent_at: datetime | None = None,
) -> InboundMessage:
    fields: dict[str, Any] = {"gateway_message_id": gateway_message_id, "sent_at": sent_at}
    return InboundMessageFactory.build(
        chat_id=chat_id,
        body=body,
        direction=direction,
        contact_name=contact_name,
        status=MessageStatus.RECEIVED if direction is Direction.INBOUND else MessageStatus.SENT,
        raw={"body": body},
        **{k: v for k, v in fields.items() if v is not None},
    )


def image_message(chat_id: str = "5511999990000", *, inline_base64: str | None = None) -> InboundMessage:
    return InboundMessageFactory.build(
        gateway_message_id=f"IMG{secrets.token_hex(8).upper()}",
        chat_id=chat_id,
        type=MessageType.IMAGE,
        body="a caption",
        media=MediaRef(gateway_ref="media-ref-1", mime_type="image/jpeg", inline_base64=inline_base64),
        raw={"body": inline_base64 or "", "caption": "a caption"},
    )


def status(gateway_message_id: str, new_status: MessageStatus) -> StatusUpdate:
    return StatusUpdate(gateway_message_id=gateway_message_id, chat_id=None, status=new_status)


# -- webhooks, as each gateway posts them ---------------------------------------------------------------


def retarget(gateway: str, data: Any, instance: WhatsAppInstance) -> Any:
    """The fixture addressed to `instance` (WPPConnect session, Evolution instance, Cloud API phone id)."""
    data = copy.deepcopy(data)
    if gateway == "wppconnect":
        data["session"] = instance.name
    elif gateway == "evolution":
        data["instance"] = instance.name
    else:
        for entry in data.get("entry", []):
            for change in entry.get("changes", []):
                change.get("value", {}).setdefault("metadata", {})["phone_number_id"] = (
                    instance.phone_number_id
                )
    return data


def fixture_for(gateway: str, name: str, instance: WhatsAppInstance) -> Any:
    return retarget(gateway, load_fixture_json(gateway, name), instance)


def with_message_id(gateway: str, data: Any, message_id: str, *, text: str | None = None) -> Any:
    """A copy of a single-message fixture with another gateway message id (and optionally text)."""
    data = copy.deepcopy(data)
    if gateway == "wppconnect":
        data["id"] = message_id
        if text is not None:
            data["body"] = text
    elif gateway == "evolution":
        data["data"]["key"]["id"] = message_id
        if text is not None:
            data["data"]["message"] = {"conversation": text}
    else:
        message = data["entry"][0]["changes"][0]["value"]["messages"][0]
        message["id"] = message_id
        if text is not None:
            message["text"] = {"body": text}
    return data


TEXT_FIXTURES = {
    "wppconnect": "onmessage_text",
    "evolution": "v2_messages_upsert_text",
    "cloudapi": "inbound_text",
}


def text_body(gateway: str, instance: WhatsAppInstance, message_id: str) -> bytes:
    """The gateway's text webhook (its fixture) for `instance`, as bytes, without Evolution's body secret."""
    data = with_message_id(gateway, fixture_for(gateway, TEXT_FIXTURES[gateway], instance), message_id)
    data.pop("apikey", None)  # Evolution's body secret: only where a case puts it
    return json.dumps(data).encode()


def evolution_body(instance: str, message_id: str, chat: str, text: str) -> bytes:
    """An Evolution `messages.upsert` text webhook built without a fixture read (benches build thousands)."""
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": instance,
            "data": {
                "key": {"remoteJid": f"{chat}@s.whatsapp.net", "fromMe": False, "id": message_id},
                "pushName": "Bench Customer",
                "message": {"conversation": text},
                "messageType": "conversation",
                "messageTimestamp": int(time.time()),
            },
            "date_time": "2026-11-24T12:00:00.000Z",
        }
    ).encode()


def signed_headers(gateway: str, body: bytes, instance: WhatsAppInstance) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if gateway == "cloudapi":
        digest = hmac.new(instance.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        headers["x-hub-signature-256"] = f"sha256={digest}"
    else:
        headers["x-webhook-secret"] = instance.webhook_secret
    return headers


async def post_webhook(
    client: AsyncTestClient[Litestar],
    gateway: str,
    instance: WhatsAppInstance,
    data: Any,
    *,
    headers: dict[str, str] | None = None,
) -> Response:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return await client.post(
        f"/api/webhooks/{gateway}/{instance.name}",
        content=body,
        headers=headers if headers is not None else signed_headers(gateway, body, instance),
    )


def jpeg(width: int = 800, height: int = 600, color: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def image_webhook(instance: Any, message_id: str, data: bytes) -> dict[str, Any]:
    """Evolution v2 `messages.upsert` of an image with the file inline (webhook_base64 on)."""
    payload: dict[str, Any] = fixture_for("evolution", "v2_messages_upsert_image_base64", instance)
    payload["data"]["key"]["id"] = message_id
    payload["data"]["message"]["base64"] = base64.b64encode(data).decode()
    return payload
