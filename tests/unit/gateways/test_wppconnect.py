from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from app.db.models import Direction, MessageStatus, MessageType
from app.domain.gateways.base import InstanceCredentials, WebhookRejected, WebhookRequest, WebhookUnauthorized
from app.domain.gateways.events import IgnoredEvent, InboundMessage, StatusUpdate
from app.domain.gateways.wppconnect import WppConnectAdapter
from tests.fixtures import load_fixture, load_fixture_json, to_body

adapter = WppConnectAdapter()
CUSTOMER = "5511999990000"
SECRET = "wpp-secret-9f8e7d"
INSTANCE = InstanceCredentials(name="loja-centro", webhook_secret=SECRET)


def parse_one(body: bytes) -> object:
    events = adapter.parse(body)
    assert len(events) == 1
    return events[0]


def message_from(name: str) -> InboundMessage:
    event = parse_one(load_fixture("wppconnect", name))
    assert isinstance(event, InboundMessage)
    return event


def test_text_message() -> None:
    message = message_from("onmessage_text")

    assert message.gateway_message_id == "false_5511999990000@c.us_3EB0C767D26A1D9B4E28"
    assert message.chat_id == CUSTOMER
    assert message.contact_name == "Maria Souza"
    assert message.direction is Direction.INBOUND
    assert message.status is MessageStatus.RECEIVED
    assert message.type is MessageType.TEXT
    assert message.body == "Bom dia! Vocês entregam no sábado?"
    assert message.sent_at == datetime.fromtimestamp(1718901986, tz=UTC)
    assert message.media is None
    assert message.raw is not None
    assert message.raw["event"] == "onmessage"
    assert message.raw["id"] == message.gateway_message_id


def test_group_message_keeps_group_id_and_no_contact_name() -> None:
    message = message_from("onmessage_group_text")

    assert message.chat_id == "120363041234567890@g.us"
    assert message.contact_name is None  # notifyName is the author, not the group
    assert message.direction is Direction.INBOUND


@pytest.mark.parametrize(
    ("fixture", "message_type", "caption", "mime_type"),
    [
        ("onmessage_image", MessageType.IMAGE, "Segue a foto do produto com defeito", "image/jpeg"),
        ("onmessage_video", MessageType.VIDEO, "Olha como ficou", "video/mp4"),
        ("onmessage_ptt", MessageType.AUDIO, None, "audio/ogg; codecs=opus"),
        ("onmessage_sticker", MessageType.STICKER, None, "image/webp"),
    ],
)
def test_media_without_inline_file(
    fixture: str, message_type: MessageType, caption: str | None, mime_type: str
) -> None:
    data = load_fixture_json("wppconnect", fixture)
    message = message_from(fixture)

    assert message.type is message_type
    assert message.body == caption
    assert message.media is not None
    assert message.media.gateway_ref == message.gateway_message_id
    assert message.media.mime_type == mime_type
    assert message.media.size_bytes == data["size"]
    # A thumbnail in `body` (images, videos) must not pass for the file.
    assert message.media.inline_base64 is None
    assert message.media.sha256 == base64.b64decode(data["filehash"]).hex()


@pytest.mark.parametrize(
    ("fixture", "message_type", "caption", "filename"),
    [
        ("onmessage_image_base64", MessageType.IMAGE, "Comprovante", None),
        ("onmessage_audio_base64", MessageType.AUDIO, None, None),
        ("onmessage_document_base64", MessageType.DOCUMENT, "Nota fiscal de junho", "nota-fiscal-junho.pdf"),
    ],
)
def test_media_with_inline_file(
    fixture: str, message_type: MessageType, caption: str | None, filename: str | None
) -> None:
    data = load_fixture_json("wppconnect", fixture)
    message = message_from(fixture)

    assert message.type is message_type
    assert message.body == caption
    assert message.media is not None
    assert message.media.inline_base64 == data["body"]  # verbatim, not decoded
    assert message.media.filename == filename
    file_bytes = base64.b64decode(data["body"])
    assert message.media.size_bytes == len(file_bytes)
    assert message.media.sha256 == hashlib.sha256(file_bytes).hexdigest()


@pytest.mark.parametrize("wa_type", ["video", "ptt", "sticker", "document"])
def test_every_media_type_takes_inline_base64_when_body_is_the_file(wa_type: str) -> None:
    data = load_fixture_json("wppconnect", "onmessage_image_base64")
    data["type"] = wa_type

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.media is not None
    assert event.media.inline_base64 == data["body"]


def test_media_uploaded_to_s3_keeps_the_url() -> None:
    data = load_fixture_json("wppconnect", "onmessage_ptt")
    data["fileUrl"] = "https://loja-centro.s3.amazonaws.com/9a8b7c.oga"

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.media is not None
    assert event.media.url == "https://loja-centro.s3.amazonaws.com/9a8b7c.oga"


def test_location() -> None:
    message = message_from("onmessage_location")

    assert message.type is MessageType.LOCATION
    assert message.body == "Av. Paulista, 1578 - Bela Vista, São Paulo"
    assert message.media is None


def test_location_without_description_uses_coordinates() -> None:
    data = load_fixture_json("wppconnect", "onmessage_location")
    del data["loc"]

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.body == "-23.561414,-46.655881"


def test_own_message_from_phone_is_outbound_to_the_other_party() -> None:
    message = message_from("onselfmessage_text")

    assert message.direction is Direction.OUTBOUND
    assert message.status is MessageStatus.SENT
    assert message.chat_id == CUSTOMER  # `to`, not the business's own number in `from`
    assert message.contact_name is None
    assert message.body == "Entregamos sim, até as 14h."


def test_own_media_message_in_onanymessage_keeps_better_status() -> None:
    message = message_from("onanymessage_own_image_base64")

    assert message.direction is Direction.OUTBOUND
    assert message.status is MessageStatus.DELIVERED  # ack 2 in the payload
    assert message.chat_id == CUSTOMER
    assert message.media is not None
    assert message.media.inline_base64 is not None


def test_own_message_recognised_by_id_prefix_alone() -> None:
    data = load_fixture_json("wppconnect", "onselfmessage_text")
    del data["fromMe"]
    data["event"] = "onanymessage"

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.direction is Direction.OUTBOUND


@pytest.mark.parametrize(
    ("ack", "status"),
    [
        (-1, MessageStatus.FAILED),
        (-4, MessageStatus.FAILED),
        (0, MessageStatus.PENDING),
        (1, MessageStatus.SENT),
        (2, MessageStatus.DELIVERED),
        (3, MessageStatus.READ),
        (4, MessageStatus.READ),
    ],
)
def test_ack_maps_to_status(ack: int, status: MessageStatus) -> None:
    data = load_fixture_json("wppconnect", "onack_delivered")
    data["ack"] = ack

    event = parse_one(to_body(data))

    assert event == StatusUpdate(
        gateway_message_id="true_5511999990000@c.us_3EB0B0B1B2B3B4B5B6B7",
        chat_id=CUSTOMER,
        status=status,
        account="loja-centro",
    )


def test_ack_fixture_is_delivered() -> None:
    event = parse_one(load_fixture("wppconnect", "onack_delivered"))

    assert isinstance(event, StatusUpdate)
    assert event.status is MessageStatus.DELIVERED


def test_ack_with_string_id_matches_message_ids() -> None:
    data = load_fixture_json("wppconnect", "onack_delivered")
    data["id"] = data["id"]["_serialized"]

    event = parse_one(to_body(data))

    assert isinstance(event, StatusUpdate)
    assert event.gateway_message_id == "true_5511999990000@c.us_3EB0B0B1B2B3B4B5B6B7"
    assert event.chat_id == CUSTOMER


def test_ack_for_received_message_is_ignored() -> None:
    data = load_fixture_json("wppconnect", "onack_delivered")
    data["id"]["fromMe"] = False

    assert isinstance(parse_one(to_body(data)), IgnoredEvent)


@pytest.mark.parametrize("fixture", ["onpresencechanged", "status_find", "onreactionmessage"])
def test_unhandled_events_are_ignored(fixture: str) -> None:
    event = parse_one(load_fixture("wppconnect", fixture))

    assert isinstance(event, IgnoredEvent)
    assert event.event == load_fixture_json("wppconnect", fixture)["event"]


@pytest.mark.parametrize("wa_type", ["e2e_notification", "gp2", "revoked", "call_log"])
def test_notification_messages_are_ignored(wa_type: str) -> None:
    data = load_fixture_json("wppconnect", "onmessage_text")
    data["type"] = wa_type

    assert isinstance(parse_one(to_body(data)), IgnoredEvent)


def test_status_broadcast_is_ignored() -> None:
    data = load_fixture_json("wppconnect", "onmessage_text")
    data["from"] = data["chatId"] = "status@broadcast"

    assert isinstance(parse_one(to_body(data)), IgnoredEvent)


def test_vcard_is_other_with_its_text() -> None:
    data = load_fixture_json("wppconnect", "onmessage_text")
    data["type"] = "vcard"
    data["body"] = "BEGIN:VCARD\nVERSION:3.0\nFN:João Pereira\nEND:VCARD"

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.type is MessageType.OTHER
    assert event.body is not None
    assert "João Pereira" in event.body


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe"])
def test_malformed_json_is_rejected_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        adapter.parse(body)
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"onmessage"',
        b'{"event": 3}',
        b'{"session": "loja-centro"}',
        b'{"event": "onmessage", "session": "loja-centro", "from": "5511999990000@c.us", "body": "oi"}',
        b'{"event": "onack", "session": "loja-centro", "ack": 3}',
        b'{"event": "onack", "session": "loja-centro", "id": "true_5511999990000@c.us_3EB0"}',
        b'{"event": "onmessage", "id": "false_x@c.us_1", "type": "chat", "body": "oi"}',
        b'{"event": "onmessage", "id": "false_x@c.us_1", "from": "x@c.us", "t": "yesterday"}',
    ],
)
def test_wrong_shape_is_rejected_422(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        adapter.parse(body)
    assert caught.value.status_code == 422


def request(headers: dict[str, str] | None = None, query: dict[str, str] | None = None) -> WebhookRequest:
    return WebhookRequest(
        body=load_fixture("wppconnect", "onmessage_text"), headers=headers or {}, query=query or {}
    )


@pytest.mark.parametrize(
    "webhook",
    [
        request(headers={"x-webhook-secret": SECRET}),
        request(headers={"authorization": f"Bearer {SECRET}"}),
        request(headers={"Authorization": f"bearer {SECRET}"}),
        request(query={"token": SECRET}),
        request(headers={"x-webhook-secret": "stale"}, query={"token": SECRET}),
    ],
)
def test_verify_accepts_secret_in_each_place(webhook: WebhookRequest) -> None:
    adapter.verify(webhook, INSTANCE)


@pytest.mark.parametrize(
    "webhook",
    [
        request(),
        request(headers={"x-webhook-secret": "wrong"}),
        request(headers={"authorization": "Bearer wrong"}),
        request(headers={"authorization": SECRET}),  # no Bearer scheme
        request(headers={"authorization": f"Basic {SECRET}"}),
        request(query={"token": ""}),
        request(query={"secret": SECRET}),
    ],
)
def test_verify_rejects_missing_or_wrong_secret(webhook: WebhookRequest) -> None:
    with pytest.raises(WebhookUnauthorized) as caught:
        adapter.verify(webhook, INSTANCE)
    assert SECRET not in caught.value.detail


def test_verify_refuses_instance_without_secret() -> None:
    with pytest.raises(WebhookUnauthorized):
        adapter.verify(
            request(headers={"x-webhook-secret": ""}), InstanceCredentials(name="x", webhook_secret="")
        )
