"""One spelling for WhatsApp chat ids, whatever the gateway.

WPPConnect says "5511999999999@c.us", Evolution (Baileys) "5511999999999@s.whatsapp.net" (sometimes with a
device suffix, "5511999999999:12@s.whatsapp.net"), the Cloud API just "5511999999999". A contact is stored by
its bare number so the same person is one contact across gateways. Groups ("…@g.us"), hidden-number ids
("…@lid"), newsletters and broadcasts keep their suffix: a bare number would be mistaken for a phone.
"""

from __future__ import annotations

# Servers whose user part is a phone number: the suffix says nothing the number does not.
_PHONE_SERVERS = frozenset({"c.us", "s.whatsapp.net"})

STATUS_BROADCAST = "status@broadcast"  # WhatsApp "stories": not a chat


def normalise_chat_id(raw_id: str) -> str:
    """Return the canonical chat id: bare number for people, "<id>@<server>" for everything else."""
    value = raw_id.strip()
    user, at, server = value.partition("@")
    # Baileys device ids ("5511…:12@s.whatsapp.net") name one of the person's devices, not another chat.
    user = user.split(":", 1)[0]
    if not at:
        return user.lstrip("+")
    if server in _PHONE_SERVERS:
        return user
    return f"{user}@{server}"


def is_group(chat_id: str) -> bool:
    return chat_id.endswith("@g.us")


def is_status_broadcast(raw_id: str | None) -> bool:
    return raw_id is not None and raw_id.strip() == STATUS_BROADCAST
