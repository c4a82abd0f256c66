"""WPPConnect Server webhook bodies, as far as we read them.

The server posts `{"event": …, "session": …, **payload}` (callWebHook in src/util/functions.ts): for message
events the payload is WA-JS's serialised message, flat at the top level. In `onack` `id` is an object
({fromMe, remote, id, _serialized}); in `onmessage` a string like "false_5511…@c.us_3EB0…". Both are accepted
everywhere. Unknown fields are ignored: WA-JS adds new ones with every WhatsApp Web release.
"""

from __future__ import annotations

import msgspec


class _Schema(msgspec.Struct, rename="camel", kw_only=True):
    pass


class WppWid(_Schema):
    """Serialised Wid (older WA-JS sends contact ids as objects rather than strings)."""

    serialized: str | None = msgspec.field(default=None, name="_serialized")
    user: str | None = None
    server: str | None = None


class WppMessageKey(_Schema):
    """Serialised MsgKey: `_serialized` is "<fromMe>_<remote>_<id>[_<participant>]"."""

    serialized: str | None = msgspec.field(default=None, name="_serialized")
    id: str | None = None
    from_me: bool | None = None
    remote: str | WppWid | None = None


class WppSender(_Schema):
    id: str | WppWid | None = None
    pushname: str | None = None
    verified_name: str | None = None
    name: str | None = None


class WppWebhook(_Schema):
    """Every WPPConnect webhook body; only `event` is common to all of them."""

    event: str
    session: str | None = None
    id: str | WppMessageKey | None = None
    type: str | None = None
    body: str | None = None
    caption: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    author: str | None = None
    chat_id: str | WppWid | None = None
    from_me: bool | None = None
    is_group_msg: bool | None = None
    notify_name: str | None = None
    sender: WppSender | None = None
    ack: int | None = None
    t: int | float | None = None
    timestamp: int | float | None = None
    # Media, filled by WA-JS; `body` carries the whole file as base64 only when the server's
    # webhook.autoDownload is on (otherwise, for images/videos/documents, a small JPEG thumbnail).
    mimetype: str | None = None
    size: int | None = None
    filename: str | None = None
    filehash: str | None = None  # base64 SHA-256 of the decrypted file
    file_url: str | None = None  # set instead of base64 when the server uploads media to S3
    # Location
    lat: float | str | None = None
    lng: float | str | None = None
    loc: str | None = None


webhook_decoder = msgspec.json.Decoder(WppWebhook)
