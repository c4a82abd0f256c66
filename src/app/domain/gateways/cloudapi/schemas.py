"""WhatsApp Cloud API (Meta) webhook bodies, as far as we read them.

`{object: "whatsapp_business_account", entry: [{id, changes: [{field, value}]}]}`. For `field` "messages"
the value holds `metadata`, `contacts`, `messages`, `statuses` and `errors`; for "smb_message_echoes"
(WhatsApp Business app coexistence) `message_echoes`: what the business sent from the app. Meta names
fields in snake_case already, so no renaming. One POST may batch several entries, changes, messages and
statuses.
"""

from __future__ import annotations

import msgspec


class _Schema(msgspec.Struct, kw_only=True):
    pass


class CloudProfile(_Schema):
    name: str | None = None


class CloudContact(_Schema):
    wa_id: str | None = None
    profile: CloudProfile | None = None


class CloudError(_Schema):
    code: int | None = None
    title: str | None = None
    message: str | None = None


class CloudText(_Schema):
    body: str | None = None


class CloudMedia(_Schema):
    """image, audio, video, document, sticker. The file itself: GET /{id} → url → GET with the token."""

    id: str
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    url: str | None = None  # newer Graph versions include it; still needs the access token
    voice: bool | None = None
    animated: bool | None = None


class CloudLocation(_Schema):
    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None


class CloudReply(_Schema):
    """interactive.button_reply / list_reply; nfm_reply (Flows) has `name`/`body` instead."""

    id: str | None = None
    title: str | None = None
    name: str | None = None
    body: str | None = None


class CloudInteractive(_Schema):
    type: str | None = None
    button_reply: CloudReply | None = None
    list_reply: CloudReply | None = None
    nfm_reply: CloudReply | None = None


class CloudButton(_Schema):
    """Quick-reply button of a template."""

    payload: str | None = None
    text: str | None = None


class CloudContactName(_Schema):
    formatted_name: str | None = None


class CloudContactCard(_Schema):
    name: CloudContactName | None = None


class CloudMessage(_Schema):
    id: str
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None  # message echoes only: the customer
    timestamp: str | int | None = None
    type: str | None = None
    text: CloudText | None = None
    image: CloudMedia | None = None
    audio: CloudMedia | None = None
    video: CloudMedia | None = None
    document: CloudMedia | None = None
    sticker: CloudMedia | None = None
    location: CloudLocation | None = None
    interactive: CloudInteractive | None = None
    button: CloudButton | None = None
    contacts: list[CloudContactCard] = []
    errors: list[CloudError] = []


class CloudStatus(_Schema):
    id: str
    status: str
    timestamp: str | int | None = None
    recipient_id: str | None = None
    errors: list[CloudError] = []


class CloudMetadata(_Schema):
    phone_number_id: str | None = None
    display_phone_number: str | None = None


class CloudMessagesValue(_Schema):
    metadata: CloudMetadata | None = None
    contacts: list[CloudContact] = []
    messages: list[CloudMessage] = []
    message_echoes: list[CloudMessage] = []
    statuses: list[CloudStatus] = []
    errors: list[CloudError] = []


class CloudChange(_Schema):
    field: str
    value: msgspec.Raw = msgspec.Raw(b"null")  # decoded per field


class CloudEntry(_Schema):
    id: str | None = None
    changes: list[CloudChange] = []


class CloudWebhook(_Schema):
    object: str
    entry: list[CloudEntry]


webhook_decoder = msgspec.json.Decoder(CloudWebhook)
messages_value_decoder = msgspec.json.Decoder(CloudMessagesValue)
