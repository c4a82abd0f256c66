"""Post gateway webhooks the way each gateway does, built from the fixtures under tests/fixtures/gateways/."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from typing import Any

from httpx import Response
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.db.models import WhatsAppInstance
from tests.fixtures import load_fixture_json


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
