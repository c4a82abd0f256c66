from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from app.db.models import Direction, MessageStatus, MessageType
from app.domain.gateways.base import InstanceCredentials, WebhookRejected, WebhookRequest, WebhookUnauthorized
from app.domain.gateways.cloudapi import CloudApiAdapter, verify_subscription
from app.domain.gateways.events import GatewayEvent, IgnoredEvent, InboundMessage, StatusUpdate
from tests.fixtures import load_fixture, load_fixture_json, to_body

adapter = CloudApiAdapter()
CUSTOMER = "5511999990000"
APP_SECRET = "c0ffee5ecret0f7heApp"
VERIFY_TOKEN = "meta-handshake-token"
INSTANCE = InstanceCredentials(name="loja-centro", webhook_secret=APP_SECRET, verify_token=VERIFY_TOKEN)


def parse_one(body: bytes) -> GatewayEvent:
    events = adapter.parse(body)
    assert len(events) == 1
    return events[0]


def message_from(name: str) -> InboundMessage:
    event = parse_one(load_fixture("cloudapi", name))
    assert isinstance(event, InboundMessage)
    return event


def first_message(name: str) -> dict[str, object]:
    value = load_fixture_json("cloudapi", name)["entry"][0]["changes"][0]["value"]
    message: dict[str, object] = value["messages"][0]
    return message


def test_text_message() -> None:
    message = message_from("inbound_text")

    assert message.gateway_message_id == "wamid.HBgNNTUxMTk5OTk5MDAwMBUCABIYFjNFQjBBMUIyQzNENEU1RjYwNzE4AA=="
    assert message.chat_id == CUSTOMER
    assert message.contact_name == "Maria Souza"
    assert message.direction is Direction.INBOUND
    assert message.status is MessageStatus.RECEIVED
    assert message.type is MessageType.TEXT
    assert message.body == "Vocês entregam no sábado?"
    assert message.sent_at == datetime.fromtimestamp(1749416383, tz=UTC)
    assert message.media is None
    assert message.raw == first_message("inbound_text")


@pytest.mark.parametrize(
    ("fixture", "message_type", "caption", "filename"),
    [
        ("inbound_image", MessageType.IMAGE, "Esse modelo aqui", None),
        ("inbound_audio", MessageType.AUDIO, None, None),
        ("inbound_video", MessageType.VIDEO, "Olha o defeito", None),
        ("inbound_document", MessageType.DOCUMENT, "Segue a nota", "nota-fiscal-marco.pdf"),
        ("inbound_sticker", MessageType.STICKER, None, None),
    ],
)
def test_media_messages(
    fixture: str, message_type: MessageType, caption: str | None, filename: str | None
) -> None:
    media_object = first_message(fixture)[message_type.value]
    assert isinstance(media_object, dict)
    message = message_from(fixture)

    assert message.type is message_type
    assert message.body == caption
    assert message.media is not None
    assert message.media.gateway_ref == media_object["id"]  # GET /{media-id}
    assert message.media.mime_type == media_object["mime_type"]
    assert message.media.filename == filename
    assert message.media.inline_base64 is None  # the Cloud API never inlines files
    assert message.media.url == media_object.get("url")
    assert message.media.sha256 is not None
    assert len(message.media.sha256) == 64


def test_media_hash_in_base64_becomes_hex() -> None:
    message = message_from("inbound_image")

    assert message.media is not None
    expected = base64.b64decode("Vg6ZkT2fGLY3OSmbJq1H6oy0DhiKqSHw0wRyZvXrLH0=").hex()
    assert message.media.sha256 == expected


def test_location() -> None:
    message = message_from("inbound_location")

    assert message.type is MessageType.LOCATION
    assert message.body == "MASP, Av. Paulista, 1578 - Bela Vista, São Paulo - SP"


@pytest.mark.parametrize(
    ("fixture", "body"),
    [
        ("inbound_interactive_button_reply", "Confirmar entrega"),
        ("inbound_button", "Parar promoções"),
        ("inbound_contacts", "João Pereira"),
        ("inbound_unsupported", "Message type unknown (131051)"),
    ],
)
def test_other_content_is_kept_with_its_text(fixture: str, body: str) -> None:
    message = message_from(fixture)

    assert message.type is MessageType.OTHER
    assert message.body == body


def test_reaction_is_ignored() -> None:
    assert isinstance(parse_one(load_fixture("cloudapi", "inbound_reaction")), IgnoredEvent)


def test_message_echo_is_own_outbound_message() -> None:
    message = message_from("smb_message_echoes")

    assert message.direction is Direction.OUTBOUND
    assert message.status is MessageStatus.SENT
    assert message.chat_id == CUSTOMER  # `to`; `from` is the business number
    assert message.contact_name is None
    assert message.body == "Separei o 42 para você."


def test_status_delivered() -> None:
    event = parse_one(load_fixture("cloudapi", "status_delivered"))

    assert event == StatusUpdate(
        gateway_message_id="wamid.HBgNNTUxMTk5OTk5MDAwMBUCABEYEjNFQjBPVVQwMDAwMDAwMDAwMDEA",
        chat_id=CUSTOMER,
        status=MessageStatus.DELIVERED,
        at=datetime.fromtimestamp(1750263773, tz=UTC),
        account="106540352242922",
    )


def test_status_failed() -> None:
    event = parse_one(load_fixture("cloudapi", "status_failed"))

    assert isinstance(event, StatusUpdate)
    assert event.status is MessageStatus.FAILED


@pytest.mark.parametrize(
    ("status", "expected"),
    [("sent", MessageStatus.SENT), ("delivered", MessageStatus.DELIVERED), ("read", MessageStatus.READ)],
)
def test_status_values(status: str, expected: MessageStatus) -> None:
    data = load_fixture_json("cloudapi", "status_delivered")
    data["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = status

    event = parse_one(to_body(data))

    assert isinstance(event, StatusUpdate)
    assert event.status is expected


def test_unknown_status_is_ignored() -> None:
    data = load_fixture_json("cloudapi", "status_delivered")
    data["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "deleted"

    assert isinstance(parse_one(to_body(data)), IgnoredEvent)


def test_one_body_with_several_messages_and_statuses() -> None:
    events = adapter.parse(load_fixture("cloudapi", "batch_messages_and_statuses"))

    messages = [e for e in events if isinstance(e, InboundMessage)]
    statuses = [e for e in events if isinstance(e, StatusUpdate)]
    assert len(events) == 5
    assert [(m.gateway_message_id, m.chat_id, m.contact_name) for m in messages] == [
        ("wamid.BATCH.IN.1", CUSTOMER, "Maria Souza"),
        ("wamid.BATCH.IN.2", "5511988881111", "João Pereira"),
    ]
    assert [(s.gateway_message_id, s.status) for s in statuses] == [
        ("wamid.BATCH.OUT.1", MessageStatus.SENT),
        ("wamid.BATCH.OUT.1", MessageStatus.DELIVERED),
        ("wamid.BATCH.OUT.2", MessageStatus.READ),
    ]
    assert messages[1].raw is not None
    assert messages[1].raw["id"] == "wamid.BATCH.IN.2"


def test_other_fields_are_ignored() -> None:
    event = parse_one(load_fixture("cloudapi", "template_status_update"))

    assert event == IgnoredEvent(event="message_template_status_update", reason="webhook field not handled")


def test_other_meta_products_are_ignored() -> None:
    assert isinstance(parse_one(b'{"object": "instagram", "entry": []}'), IgnoredEvent)


def test_value_with_only_errors_is_ignored_with_the_reason() -> None:
    data = load_fixture_json("cloudapi", "status_delivered")
    value = data["entry"][0]["changes"][0]["value"]
    del value["statuses"]
    value["errors"] = [{"code": 130429, "title": "Rate limit hit", "message": "Rate limit hit"}]

    event = parse_one(to_body(data))

    assert isinstance(event, IgnoredEvent)
    assert "130429" in event.reason


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"object": "whatsapp_business_account", "entry": [}'])
def test_malformed_json_is_rejected_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        adapter.parse(body)
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"object": 3, "entry": []}',
        b'{"object": "whatsapp_business_account"}',
        b'{"object": "whatsapp_business_account", "entry": {}}',
        b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {}}]}]}',
        b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": '
        b'{"messages": [{"from": "5511999990000", "type": "text", "text": {"body": "oi"}}]}}]}]}',
        b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": '
        b'{"messages": [{"from": "5511999990000", "id": "wamid.X", "type": "image"}]}}]}]}',
        b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": '
        b'{"statuses": [{"status": "read"}]}}]}]}',
    ],
)
def test_wrong_shape_is_rejected_422(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        adapter.parse(body)
    assert caught.value.status_code == 422


def signed(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_signature_accepted() -> None:
    body = load_fixture("cloudapi", "inbound_text")
    adapter.verify(
        WebhookRequest(body=body, headers={"x-hub-signature-256": signed(body)}, query={}), INSTANCE
    )


def test_signature_accepts_upper_case_hex_and_header_name() -> None:
    body = load_fixture("cloudapi", "inbound_text")
    header = "sha256=" + signed(body).removeprefix("sha256=").upper()
    adapter.verify(WebhookRequest(body=body, headers={"X-Hub-Signature-256": header}, query={}), INSTANCE)


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "missing"),
        ("", "missing"),
        ("sha1=" + "a" * 40, "malformed"),
        ("sha256=" + "z" * 64, "malformed"),
        ("sha256=abc", "malformed"),
        ("sha256=" + "é" * 64, "malformed"),
        ("deadbeef", "malformed"),
        ("sha256=" + "0" * 64, "does not match"),
    ],
)
def test_signature_rejected(header: str | None, detail: str) -> None:
    body = load_fixture("cloudapi", "inbound_text")
    headers = {} if header is None else {"x-hub-signature-256": header}

    with pytest.raises(WebhookUnauthorized) as caught:
        adapter.verify(WebhookRequest(body=body, headers=headers, query={}), INSTANCE)
    assert detail in caught.value.detail
    assert APP_SECRET not in caught.value.detail


def test_signature_of_another_body_or_secret_rejected() -> None:
    body = load_fixture("cloudapi", "inbound_text")
    tampered = body.replace(b"entregam", b"cobram")
    assert tampered != body
    for header in (signed(tampered), signed(body, "another-app-secret")):
        with pytest.raises(WebhookUnauthorized):
            adapter.verify(
                WebhookRequest(body=body, headers={"x-hub-signature-256": header}, query={}), INSTANCE
            )


def handshake(**overrides: str) -> dict[str, str]:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    query.update(overrides)
    return {key: value for key, value in query.items() if value != "<absent>"}


def test_subscription_handshake_returns_challenge() -> None:
    assert verify_subscription(handshake(), INSTANCE) == "1158201444"


@pytest.mark.parametrize(
    "query",
    [
        handshake(**{"hub.verify_token": "wrong"}),
        handshake(**{"hub.verify_token": "<absent>"}),
        handshake(**{"hub.mode": "unsubscribe"}),
        handshake(**{"hub.mode": "<absent>"}),
    ],
)
def test_subscription_handshake_rejects_wrong_token_or_mode(query: dict[str, str]) -> None:
    with pytest.raises(WebhookUnauthorized) as caught:
        verify_subscription(query, INSTANCE)
    assert VERIFY_TOKEN not in caught.value.detail


def test_subscription_handshake_needs_configured_token() -> None:
    instance = InstanceCredentials(name="loja-centro", webhook_secret=APP_SECRET)
    with pytest.raises(WebhookUnauthorized):
        verify_subscription(handshake(), instance)


def test_subscription_handshake_without_challenge_is_rejected() -> None:
    with pytest.raises(WebhookRejected) as caught:
        verify_subscription(handshake(**{"hub.challenge": "<absent>"}), INSTANCE)
    assert caught.value.status_code == 400
