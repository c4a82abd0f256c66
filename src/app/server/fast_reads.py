"""Which reads the fast path may answer itself, parsed from the bare ASGI scope — only the plainest
spellings of them; anything else is None and goes to Litestar, which validates and answers it.

Why (issue 13, item 5): a py-spy profile of the API under the uncached history bench put about as many
samples in Litestar's middleware, routing, dependency and response machinery as in the read itself. These
reads need none of it once the token is one Litestar has verified: the fast path calls the same PageReader
the controllers call and answers the same bytes (tests/integration/test_fast_path.py compares them).

Accepted, in any order, each at most once:
  history  `limit=N` (1..100), and `before_seq=N` (1..2^63-1) or `after_seq=N` (0..2^63-1), not both
  inbox    `limit=N`, `cursor=TOKEN` (URL-safe base64, as issued); no filters
Numbers are plain decimal digits without leading zeros; no percent-encoding, no empty or repeated names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from uuid import UUID

from app.lib.pagination import ActivityCursor, InvalidCursor

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
SEQ_MAX = 2**63 - 1  # as the controller's bound
PREFIX = "/api/whatsapp-optimized/"
MESSAGES = PREFIX + "messages/"
INBOX = PREFIX + "conversations"

_NUMBER = re.compile(rb"0|[1-9][0-9]{0,18}")
_CURSOR = re.compile(rb"[A-Za-z0-9_-]{1,200}")


@dataclass(frozen=True, slots=True)
class HistoryRead:
    conversation_id: UUID
    limit: int
    before_seq: int | None
    after_seq: int | None


@dataclass(frozen=True, slots=True)
class InboxRead:
    limit: int
    cursor: ActivityCursor | None


def _pairs(query_string: bytes, allowed: frozenset[bytes]) -> dict[bytes, bytes] | None:
    if not query_string:
        return {}
    pairs: dict[bytes, bytes] = {}
    for part in query_string.split(b"&"):
        name, equals, value = part.partition(b"=")
        if not equals or name not in allowed or name in pairs:
            return None
        pairs[name] = value
    return pairs


def _number(value: bytes | None, low: int, high: int) -> int | None:
    if value is None or not _NUMBER.fullmatch(value):
        return None
    number = int(value)
    return number if low <= number <= high else None


_HISTORY_NAMES = frozenset({b"limit", b"before_seq", b"after_seq"})
_INBOX_NAMES = frozenset({b"limit", b"cursor"})


def _limit(pairs: dict[bytes, bytes]) -> int | None:
    return _number(pairs[b"limit"], 1, MAX_LIMIT) if b"limit" in pairs else DEFAULT_LIMIT


def parse_history(path: str, query_string: bytes) -> HistoryRead | None:
    raw_id = path[len(MESSAGES) :]
    if len(raw_id) != 36:  # the canonical form only; Litestar judges any other spelling
        return None
    try:
        conversation_id = UUID(raw_id)
    except ValueError:
        return None
    pairs = _pairs(query_string, _HISTORY_NAMES)
    if pairs is None or (b"before_seq" in pairs and b"after_seq" in pairs):
        return None
    limit = _limit(pairs)
    before = _number(pairs[b"before_seq"], 1, SEQ_MAX) if b"before_seq" in pairs else None
    after = _number(pairs[b"after_seq"], 0, SEQ_MAX) if b"after_seq" in pairs else None
    if (
        limit is None
        or (b"before_seq" in pairs and before is None)
        or (b"after_seq" in pairs and after is None)
    ):
        return None
    return HistoryRead(conversation_id, limit, before, after)


def parse_inbox(query_string: bytes) -> InboxRead | None:
    pairs = _pairs(query_string, _INBOX_NAMES)
    if pairs is None:
        return None
    limit = _limit(pairs)
    if limit is None:
        return None
    token = pairs.get(b"cursor")
    if token is None:
        return InboxRead(limit, None)
    if not _CURSOR.fullmatch(token):
        return None
    try:
        return InboxRead(limit, ActivityCursor.decode(token.decode()))
    except InvalidCursor:
        return None  # Litestar answers the 400


__all__ = ["INBOX", "MESSAGES", "PREFIX", "HistoryRead", "InboxRead", "parse_history", "parse_inbox"]
