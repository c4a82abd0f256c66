from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from app.db.models import Direction, MessageStatus, MessageType
from app.domain.gateways.base import InstanceCredentials, WebhookRejected, WebhookRequest, WebhookUnauthorized
from app.domain.gateways.events import GatewayEvent, IgnoredEvent, InboundMessage, StatusUpdate
from app.domain.gateways.evolution import EvolutionAdapter
from tests.fixtures import load_fixture, load_fixture_json, to_body

adapter = EvolutionAdapter()
CUSTOMER = "5511999990000"
APIKEY = "B6D711FCDE4D4FD5936544120E713976"  # what the fixtures carry in `apikey`
INSTANCE = InstanceCredentials(name="loja-centro", webhook_secret=APIKEY)


def parse_one(body: bytes) -> GatewayEvent:
    events = adapter.parse(body)
    assert len(events) == 1
    return events[0]


def message_from(name: str) -> InboundMessage:
    event = parse_one(load_fixture("evolution", name))
    assert isinstance(event, InboundMessage)
    return event


def test_v2_text_message() -> None:
    message = message_from("v2_messages_upsert_text")

    assert message.gateway_message_id == "3EB0A1B2C3D4E5F60718"
    assert message.chat_id == CUSTOMER
    assert message.contact_name == "Maria Souza"
    assert message.direction is Direction.INBOUND
    assert message.status is MessageStatus.RECEIVED
    assert message.type is MessageType.TEXT
    assert message.body == "Oi, vocês têm o tênis 42 em estoque?"
    assert message.sent_at == datetime.fromtimestamp(1741957521, tz=UTC)
    assert message.media is None
    assert message.raw == load_fixture_json("evolution", "v2_messages_upsert_text")["data"]


def test_v1_extended_text_message() -> None:
    message = message_from("v1_messages_upsert_text")

    assert message.gateway_message_id == "3A554E20ECABF3D45BB2"
    assert message.type is MessageType.TEXT
    assert message.body == "Vi o anúncio no Instagram, ainda tem?"
    assert message.sent_at == datetime.fromtimestamp(1717607420, tz=UTC)


@pytest.mark.parametrize("event_name", ["MESSAGES_UPSERT", "messages-upsert", "Messages.Upsert"])
def test_event_name_spellings(event_name: str) -> None:
    data = load_fixture_json("evolution", "v2_messages_upsert_text")
    data["event"] = event_name

    assert isinstance(parse_one(to_body(data)), InboundMessage)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1741957521, 1741957521),
        (1741957521123, 1741957521.123),  # milliseconds (Evolution's fallback path)
        ("1741957521", 1741957521),
        ({"low": 1741957521, "high": 0, "unsigned": True}, 1741957521),  # protobuf Long
    ],
)
def test_timestamp_spellings(timestamp: object, expected: float) -> None:
    data = load_fixture_json("evolution", "v2_messages_upsert_text")
    data["data"]["messageTimestamp"] = timestamp

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.sent_at == datetime.fromtimestamp(expected, tz=UTC)


def test_missing_timestamp_falls_back_to_envelope_time() -> None:
    data = load_fixture_json("evolution", "v2_messages_upsert_text")
    del data["data"]["messageTimestamp"]

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.sent_at == datetime(2025, 3, 14, 13, 5, 21, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fixture", "message_type", "caption", "filename"),
    [
        ("v2_messages_upsert_image_base64", MessageType.IMAGE, "Esse modelo aqui", None),
        ("v2_messages_upsert_document_base64", MessageType.DOCUMENT, "Segue a nota", "nota-fiscal-marco.pdf"),
        (
            "v1_messages_upsert_document_wrapped",
            MessageType.DOCUMENT,
            "Orçamento atualizado",
            "orcamento.pdf",
        ),
    ],
)
def test_media_with_inline_base64(
    fixture: str, message_type: MessageType, caption: str, filename: str | None
) -> None:
    inline = load_fixture_json("evolution", fixture)["data"]["message"]["base64"]
    message = message_from(fixture)

    assert message.type is message_type
    assert message.body == caption
    assert message.media is not None
    assert message.media.gateway_ref == message.gateway_message_id
    assert message.media.inline_base64 == inline  # verbatim
    assert message.media.filename == filename
    file_bytes = base64.b64decode(inline)
    assert message.media.size_bytes == len(file_bytes)
    assert message.media.sha256 == hashlib.sha256(file_bytes).hexdigest()
    assert message.media.url is None  # the WhatsApp CDN url is encrypted: not offered


@pytest.mark.parametrize(
    ("fixture", "message_type", "caption", "mime_type"),
    [
        ("v2_messages_upsert_audio", MessageType.AUDIO, None, "audio/ogg; codecs=opus"),
        ("v2_messages_upsert_video", MessageType.VIDEO, "Olha o defeito", "video/mp4"),
        ("v2_messages_upsert_sticker", MessageType.STICKER, None, "image/webp"),
    ],
)
def test_media_without_inline_base64(
    fixture: str, message_type: MessageType, caption: str | None, mime_type: str
) -> None:
    message = message_from(fixture)

    assert message.type is message_type
    assert message.body == caption
    assert message.media is not None
    assert message.media.gateway_ref == message.gateway_message_id
    assert message.media.mime_type == mime_type
    assert message.media.inline_base64 is None
    assert message.media.size_bytes is not None
    assert message.media.size_bytes > 0
    assert message.media.sha256 is not None
    assert len(message.media.sha256) == 64


def test_audio_size_from_protobuf_long() -> None:
    message = message_from("v2_messages_upsert_audio")
    data = load_fixture_json("evolution", "v2_messages_upsert_audio")

    assert message.media is not None
    assert message.media.size_bytes == data["data"]["message"]["audioMessage"]["fileLength"]["low"]


@pytest.mark.parametrize(
    "field", ["videoMessage", "audioMessage", "stickerMessage", "documentMessage", "ptvMessage"]
)
def test_every_media_type_takes_inline_base64(field: str) -> None:
    data = load_fixture_json("evolution", "v2_messages_upsert_image_base64")
    message = data["data"]["message"]
    message[field] = message.pop("imageMessage")

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.media is not None
    assert event.media.inline_base64 == message["base64"]


def test_media_copied_to_s3_keeps_its_url() -> None:
    data = load_fixture_json("evolution", "v2_messages_upsert_audio")
    data["data"]["message"]["mediaUrl"] = "https://minio.example.com/evolution/3EB0AUD.oga"

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.media is not None
    assert event.media.url == "https://minio.example.com/evolution/3EB0AUD.oga"


def test_location() -> None:
    message = message_from("v2_messages_upsert_location")

    assert message.type is MessageType.LOCATION
    assert message.body == "MASP, Av. Paulista, 1578 - Bela Vista, São Paulo - SP"


def test_own_message_from_phone_is_outbound() -> None:
    message = message_from("v2_messages_upsert_from_me")

    assert message.direction is Direction.OUTBOUND
    assert message.status is MessageStatus.SENT  # SERVER_ACK
    assert message.chat_id == CUSTOMER  # remoteJid: the other party
    assert message.contact_name is None  # pushName is "Você"


def test_own_message_keeps_better_status() -> None:
    data = load_fixture_json("evolution", "v2_messages_upsert_from_me")
    data["data"]["status"] = "DELIVERY_ACK"

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.status is MessageStatus.DELIVERED


def test_hidden_number_chat_uses_phone_alternative() -> None:
    message = message_from("v2_messages_upsert_lid")

    assert message.chat_id == CUSTOMER


def test_hidden_number_without_alternative_keeps_lid() -> None:
    data = load_fixture_json("evolution", "v2_messages_upsert_lid")
    del data["data"]["key"]["remoteJidAlt"]

    event = parse_one(to_body(data))

    assert isinstance(event, InboundMessage)
    assert event.chat_id == "182736455463728@lid"


def test_update_v2_read() -> None:
    event = parse_one(load_fixture("evolution", "v2_messages_update_read"))

    assert event == StatusUpdate(
        gateway_message_id="3EB0OWN0000000000007",  # keyId, not Evolution's database messageId
        chat_id=CUSTOMER,
        status=MessageStatus.READ,
        at=datetime(2025, 3, 14, 13, 6, 2, 456000, tzinfo=UTC),
        account="loja-centro",
    )


def test_update_v1_delivery() -> None:
    event = parse_one(load_fixture("evolution", "v1_messages_update_delivery"))

    assert event == StatusUpdate(
        gateway_message_id="BAE5F233EA3C450C",
        chat_id=CUSTOMER,
        status=MessageStatus.DELIVERED,
        at=datetime.fromtimestamp(1717607461.234, tz=UTC),
        account="loja-centro",
    )


def test_update_list_with_numeric_statuses() -> None:
    events = adapter.parse(load_fixture("evolution", "baileys_messages_update_list"))

    assert [(e.gateway_message_id, e.chat_id, e.status) for e in events if isinstance(e, StatusUpdate)] == [
        ("BAE5AAAA00000001", CUSTOMER, MessageStatus.SENT),
        ("BAE5AAAA00000002", CUSTOMER, MessageStatus.DELIVERED),
        ("BAE5AAAA00000003", "120363041234567890@g.us", MessageStatus.READ),
    ]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("ERROR", MessageStatus.FAILED),
        ("PENDING", MessageStatus.PENDING),
        ("SERVER_ACK", MessageStatus.SENT),
        ("DELIVERY_ACK", MessageStatus.DELIVERED),
        ("READ", MessageStatus.READ),
        ("PLAYED", MessageStatus.READ),
        (0, MessageStatus.FAILED),
        (1, MessageStatus.PENDING),
        (2, MessageStatus.SENT),
        (3, MessageStatus.DELIVERED),
        (4, MessageStatus.READ),
        (5, MessageStatus.READ),
        ("3", MessageStatus.DELIVERED),
    ],
)
def test_status_values(status: object, expected: MessageStatus) -> None:
    data = load_fixture_json("evolution", "v2_messages_update_read")
    data["data"]["status"] = status

    event = parse_one(to_body(data))

    assert isinstance(event, StatusUpdate)
    assert event.status is expected


@pytest.mark.parametrize(
    "fixture",
    [
        "v2_messages_update_deleted",
        "v2_messages_update_inbound_read",
        "v2_messages_upsert_reaction",
        "send_message",
        "connection_update",
        "presence_update",
        "qrcode_updated",
    ],
)
def test_unhandled_events_are_ignored(fixture: str) -> None:
    assert isinstance(parse_one(load_fixture("evolution", fixture)), IgnoredEvent)


def test_status_broadcast_is_ignored() -> None:
    data = load_fixture_json("evolution", "v2_messages_upsert_text")
    data["data"]["key"]["remoteJid"] = "status@broadcast"

    assert isinstance(parse_one(to_body(data)), IgnoredEvent)


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"event": "messages.upsert", "data": {'])
def test_malformed_json_is_rejected_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        adapter.parse(body)
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"event": 3}',
        b'{"instance": "loja-centro", "data": {}}',
        b'{"event": "messages.upsert", "data": null}',
        b'{"event": "messages.upsert", "data": {"key": {"remoteJid": "5511999990000@s.whatsapp.net"}}}',
        b'{"event": "messages.upsert", "data": {"message": {"conversation": "oi"}}}',
        b'{"event": "messages.update", "data": {"remoteJid": "5511999990000@c.us", "status": "READ"}}',
        b'{"event": "messages.update", "data": "READ"}',
    ],
)
def test_wrong_shape_is_rejected_422(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        adapter.parse(body)
    assert caught.value.status_code == 422


def request(
    headers: dict[str, str] | None = None, query: dict[str, str] | None = None, apikey: str | None = None
) -> WebhookRequest:
    data = load_fixture_json("evolution", "v2_messages_upsert_text")
    data["apikey"] = apikey
    return WebhookRequest(body=to_body(data), headers=headers or {}, query=query or {})


@pytest.mark.parametrize(
    "webhook",
    [
        request(apikey=APIKEY),
        request(headers={"x-webhook-secret": APIKEY}),
        request(headers={"authorization": f"Bearer {APIKEY}"}),
        request(query={"token": APIKEY}),
    ],
)
def test_verify_accepts_secret_in_each_place(webhook: WebhookRequest) -> None:
    adapter.verify(webhook, INSTANCE)


def test_verify_accepts_fixture_as_posted() -> None:
    body = load_fixture("evolution", "v2_messages_upsert_text")
    adapter.verify(WebhookRequest(body=body, headers={}, query={}), INSTANCE)


@pytest.mark.parametrize(
    "webhook",
    [
        request(),
        request(apikey="someone-elses-key"),
        request(headers={"x-webhook-secret": "wrong"}),
        request(query={"token": "wrong"}),
        # A secret outside the body decides alone, so a wrong one is refused before the body is read.
        request(headers={"x-webhook-secret": "old"}, apikey=APIKEY),
        WebhookRequest(body=b"{not json", headers={}, query={}),
        WebhookRequest(body=b'["' + APIKEY.encode() + b'"]', headers={}, query={}),
    ],
)
def test_verify_rejects_missing_or_wrong_secret(webhook: WebhookRequest) -> None:
    with pytest.raises(WebhookUnauthorized) as caught:
        adapter.verify(webhook, INSTANCE)
    assert APIKEY not in caught.value.detail
