"""Evolution API webhook bodies, as far as we read them.

Envelope (WebhookController.emit, v1 and v2 alike): `{event, instance, data, destination, date_time, sender,
server_url, apikey}`; `event` is "messages.upsert", or "MESSAGES_UPSERT"/"messages-upsert" from some setups.
`data` of messages.upsert is Baileys' WAMessage as Evolution prepares it (v1 and v2 agree on the shape; v2
also folds extendedTextMessage into `conversation` and adds `status`, and with webhookBase64 on,
`message.base64`). `data` of messages.update differs by version — see EvolutionStatusRecord.
"""

from __future__ import annotations

import msgspec


class _Schema(msgspec.Struct, rename="camel", kw_only=True):
    pass


class EvolutionLong(_Schema):
    """A protobuf Long as JSON.stringify renders it (Baileys timestamps and file lengths, now and then)."""

    low: int = 0
    high: int = 0
    unsigned: bool | None = None


EvolutionNumber = int | float | str | EvolutionLong | None


class EvolutionKey(_Schema):
    id: str
    remote_jid: str
    from_me: bool = False
    participant: str | None = None
    # Baileys 7 / Evolution v2: the phone-number jid when `remote_jid` is a hidden "@lid" id.
    remote_jid_alt: str | None = None
    sender_pn: str | None = None


class EvolutionMedia(_Schema):
    """imageMessage, videoMessage, audioMessage, documentMessage, stickerMessage, ptvMessage."""

    mimetype: str | None = None
    caption: str | None = None
    file_sha256: str | None = None  # base64
    file_length: EvolutionNumber = None
    file_name: str | None = None
    url: str | None = None  # WhatsApp CDN, encrypted (.enc): useless without the media key
    ptt: bool | None = None


class EvolutionText(_Schema):
    text: str | None = None


class EvolutionLocation(_Schema):
    degrees_latitude: float | None = None
    degrees_longitude: float | None = None
    name: str | None = None
    address: str | None = None


class EvolutionContactCard(_Schema):
    display_name: str | None = None


class EvolutionReply(_Schema):
    """buttonsResponseMessage, templateButtonReplyMessage, listResponseMessage: what the person tapped."""

    selected_display_text: str | None = None
    title: str | None = None


class EvolutionPoll(_Schema):
    name: str | None = None


class EvolutionWrapper(_Schema):
    """ephemeralMessage / viewOnceMessage(V2) / documentWithCaptionMessage: `{message: {...}}`."""

    message: EvolutionContent | None = None


class EvolutionContent(_Schema):
    """Baileys' proto.IMessage: exactly one content field is set (plus bookkeeping we ignore)."""

    conversation: str | None = None
    extended_text_message: EvolutionText | None = None
    image_message: EvolutionMedia | None = None
    video_message: EvolutionMedia | None = None
    ptv_message: EvolutionMedia | None = None
    audio_message: EvolutionMedia | None = None
    document_message: EvolutionMedia | None = None
    document_with_caption_message: EvolutionWrapper | None = None
    sticker_message: EvolutionMedia | None = None
    location_message: EvolutionLocation | None = None
    live_location_message: EvolutionLocation | None = None
    contact_message: EvolutionContactCard | None = None
    contacts_array_message: EvolutionContactCard | None = None
    buttons_response_message: EvolutionReply | None = None
    template_button_reply_message: EvolutionReply | None = None
    list_response_message: EvolutionReply | None = None
    poll_creation_message: EvolutionPoll | None = None
    poll_creation_message_v3: EvolutionPoll | None = None
    ephemeral_message: EvolutionWrapper | None = None
    view_once_message: EvolutionWrapper | None = None
    view_once_message_v2: EvolutionWrapper | None = None
    view_once_message_v2_extension: EvolutionWrapper | None = None
    # Added by Evolution, not Baileys: the file itself (webhookBase64) or its S3/MinIO copy.
    base64: str | None = None
    media_url: str | None = None


class EvolutionMessageRecord(_Schema):
    """`data` of messages.upsert."""

    key: EvolutionKey
    push_name: str | None = None
    message: EvolutionContent | None = None
    message_type: str | None = None
    message_timestamp: EvolutionNumber = None
    status: str | int | None = None  # v2: "DELIVERY_ACK" for received, "SERVER_ACK"/"PENDING"… for own


class EvolutionStatusKey(_Schema):
    id: str | None = None
    remote_jid: str | None = None
    from_me: bool | None = None


class EvolutionStatusChange(_Schema):
    status: str | int | None = None


class EvolutionStatusRecord(_Schema):
    """`data` of messages.update, in every shape seen:

    - v2: `{keyId, remoteJid, fromMe, participant, status: "READ", instanceId, messageId}` — careful,
      `messageId` there is Evolution's database id, not WhatsApp's;
    - v1: `{id, remoteJid, fromMe, participant, status: "DELIVERY_ACK", datetime: <ms>, owner}` (key spread);
    - Baileys' own `{key: {...}, update: {status: 3}}`, alone or in a list, numeric status 0..5.
    """

    key_id: str | None = None
    id: str | None = None
    remote_jid: str | None = None
    from_me: bool | None = None
    status: str | int | None = None
    datetime: int | float | str | None = None
    key: EvolutionStatusKey | None = None
    update: EvolutionStatusChange | None = None


class EvolutionWebhook(_Schema):
    event: str
    instance: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")  # decoded per event
    date_time: str | None = msgspec.field(default=None, name="date_time")
    apikey: str | None = None


class EvolutionApiKey(_Schema):
    """Just enough of a body to read the secret before trusting anything else in it."""

    apikey: str | None = None


webhook_decoder = msgspec.json.Decoder(EvolutionWebhook)
upsert_decoder = msgspec.json.Decoder(EvolutionMessageRecord | list[EvolutionMessageRecord])
update_decoder = msgspec.json.Decoder(EvolutionStatusRecord | list[EvolutionStatusRecord])
apikey_decoder = msgspec.json.Decoder(EvolutionApiKey)
