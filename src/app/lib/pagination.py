"""Keyset cursors: opaque, URL-safe tokens holding the sort key of the last row a client saw.

advanced-alchemy paginates by offset only; offsets skip or repeat rows while new messages arrive, so lists
that grow at the top (conversations by activity) page by key instead.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from uuid import UUID

import msgspec

_INVALID = "cursor is not valid; use the next_cursor value of a previous page"


class InvalidCursor(ValueError):
    """The client sent a cursor we did not issue (or one from an older format)."""


class ActivityCursor(msgspec.Struct, array_like=True, frozen=True):
    """Position in a list sorted by (last_message_at DESC, id DESC)."""

    at: datetime
    id: UUID

    def encode(self) -> str:
        return base64.urlsafe_b64encode(msgspec.json.encode(self)).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str) -> ActivityCursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            cursor = msgspec.json.decode(raw, type=cls)
        except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
            raise InvalidCursor(_INVALID) from exc
        if cursor.at.tzinfo is None:
            raise InvalidCursor(_INVALID)
        try:
            # In UTC, as issued; a time whose offset takes it out of datetime's range in UTC
            # ("0001-01-01T00:00:00+14:00") is no position at all, and the driver would fail on it (issue 12).
            return msgspec.structs.replace(cursor, at=cursor.at.astimezone(UTC))
        except OverflowError as exc:
            raise InvalidCursor(_INVALID) from exc
