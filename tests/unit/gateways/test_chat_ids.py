from __future__ import annotations

import pytest

from app.domain.gateways.chat_ids import is_group, is_status_broadcast, normalise_chat_id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5511999999999@c.us", "5511999999999"),  # WPPConnect
        ("5511999999999@s.whatsapp.net", "5511999999999"),  # Evolution / Baileys
        ("5511999999999:12@s.whatsapp.net", "5511999999999"),  # a device of that person
        ("5511999999999", "5511999999999"),  # Cloud API
        ("+5511999999999", "5511999999999"),
        (" 5511999999999@c.us ", "5511999999999"),
        ("120363041234567890@g.us", "120363041234567890@g.us"),
        ("5511999999999-1612345678@g.us", "5511999999999-1612345678@g.us"),  # old-style group id
        ("182736455463728@lid", "182736455463728@lid"),
        ("182736455463728:3@lid", "182736455463728@lid"),
        ("120363123456789012@newsletter", "120363123456789012@newsletter"),
        ("status@broadcast", "status@broadcast"),
    ],
)
def test_normalise_chat_id(raw: str, expected: str) -> None:
    assert normalise_chat_id(raw) == expected


def test_same_person_is_one_id_across_gateways() -> None:
    spellings = {"5511999999999@c.us", "5511999999999@s.whatsapp.net", "5511999999999"}
    assert {normalise_chat_id(spelling) for spelling in spellings} == {"5511999999999"}


def test_is_group() -> None:
    assert is_group("120363041234567890@g.us")
    assert not is_group("5511999999999")
    assert not is_group("182736455463728@lid")


def test_is_status_broadcast() -> None:
    assert is_status_broadcast("status@broadcast")
    assert not is_status_broadcast(None)
    assert not is_status_broadcast("5511999999999@c.us")
