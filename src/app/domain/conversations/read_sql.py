"""The two hot reads as fixed SQL on a plain asyncpg connection, rows decoded straight into the response
structs (issue 13, item 5: uncached reads within 3x raw asyncpg running the same queries).

History is one statement: the conversation's row, scoped by org, with its window of messages (and their
media) joined laterally. No row at all means no such conversation in this org — another org's id answers
404 exactly like an unknown one; one row with no message means an empty window. last_seq and the window
come from the same snapshot, so `has_more_after` can never contradict the items.

The inbox is one statement per combination of filters (at most 16 texts, built once each), each a keyset
scan of the (org_id, last_message_at DESC, id DESC) index, as ConversationService's query was.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from uuid import UUID

import asyncpg

from app.db.models import ConversationStatus
from app.domain.conversations.schemas import (
    ContactOut,
    ConversationOut,
    ConversationPage,
    MediaOut,
    MessageOut,
    MessagePage,
    media_url,
)
from app.lib.domain_errors import NotFound
from app.lib.driver_sql import DriverConnection
from app.lib.pagination import ActivityCursor

_READY, _FAILED = "ready", "failed"  # MediaState values, as stored

_WINDOW_COLUMNS = (
    "m.id, m.seq, m.gateway_message_id, m.direction, m.type, m.body, m.status, m.sent_at, m.received_at, "
    "md.id AS media_id, md.state AS media_state, md.content_type, md.mime_type, md.size_bytes, "
    "md.filename, md.has_thumbnail, md.width, md.height, md.error AS media_error"
)


def _history_sql(where: str, order: str) -> str:
    # Built from this module's constants only; every value travels as a parameter.
    return (
        f"SELECT c.last_seq, w.* FROM conversations c LEFT JOIN LATERAL ("  # noqa: S608
        f"SELECT {_WINDOW_COLUMNS} FROM messages m LEFT OUTER JOIN media md ON md.message_id = m.id "
        f"WHERE m.conversation_id = $1{where} ORDER BY m.seq {order} LIMIT $3"
        f") w ON true WHERE c.id = $1 AND c.org_id = $2"
    )


# $1 conversation, $2 org, $3 limit, $4 the seq bound
HISTORY_LATEST = _history_sql("", "DESC")
HISTORY_BEFORE = _history_sql(" AND m.seq < $4", "DESC")
HISTORY_AFTER = _history_sql(" AND m.seq > $4", "ASC")


def _media_out(row: asyncpg.Record) -> MediaOut:
    media_id: UUID = row["media_id"]
    state: str = row["media_state"]
    url = media_url(media_id)
    return MediaOut(
        id=media_id,
        state=state,
        mime_type=row["content_type"] or row["mime_type"],
        size_bytes=row["size_bytes"],
        filename=row["filename"],
        url=url,
        thumbnail_url=f"{url}/thumbnail" if state == _READY and row["has_thumbnail"] else None,
        width=row["width"],
        height=row["height"],
        error=row["media_error"] if state == _FAILED else None,
    )


def _message_out(conversation_id: UUID, row: asyncpg.Record) -> MessageOut:
    return MessageOut(
        id=row["id"],
        conversation_id=conversation_id,
        seq=row["seq"],
        gateway_message_id=row["gateway_message_id"],
        direction=row["direction"],
        type=row["type"],
        body=row["body"],
        status=row["status"],
        sent_at=row["sent_at"],
        received_at=row["received_at"],
        media=None if row["media_id"] is None else _media_out(row),
    )


async def history_page(
    conn: DriverConnection,
    org_id: UUID,
    conversation_id: UUID,
    *,
    before_seq: int | None,
    after_seq: int | None,
    limit: int,
) -> MessagePage:
    """A page of messages: the latest by default, else older than before_seq or newer than after_seq."""
    if after_seq is not None:
        rows = await conn.fetch(HISTORY_AFTER, conversation_id, org_id, limit, after_seq)
    elif before_seq is not None:
        rows = await conn.fetch(HISTORY_BEFORE, conversation_id, org_id, limit, before_seq)
    else:
        rows = await conn.fetch(HISTORY_LATEST, conversation_id, org_id, limit)
    return _message_page(conversation_id, rows, before_seq=before_seq, after_seq=after_seq)


def _message_page(
    conversation_id: UUID, rows: Sequence[asyncpg.Record], *, before_seq: int | None, after_seq: int | None
) -> MessagePage:
    if not rows:
        raise NotFound("conversation not found")
    last_seq: int = rows[0]["last_seq"]
    items = [_message_out(conversation_id, row) for row in rows if row["id"] is not None]
    if after_seq is None:
        items.reverse()
    if items:
        has_before, has_after = items[0].seq > 1, items[-1].seq < last_seq
    else:  # an empty window: nothing on the side we looked at
        has_before = after_seq is not None and after_seq > 0 and last_seq > 0
        has_after = before_seq is not None and before_seq <= last_seq
    return MessagePage(
        conversation_id=conversation_id,
        items=items,
        last_seq=last_seq,
        has_more_before=has_before,
        has_more_after=has_after,
    )


@cache
def inbox_sql(by_instance: bool, by_status: bool, unread_only: bool, after_cursor: bool) -> str:
    """$1 org, $2 limit + 1, then in order: instance, status, cursor time, cursor id (those that apply)."""
    where = ["c.org_id = $1"]
    args = 2
    if by_instance:
        args += 1
        where.append(f"c.instance_id = ${args}")
    if by_status:
        args += 1
        where.append(f"c.status = ${args}")
    if unread_only:
        where.append("c.unread_count > 0")
    if after_cursor:
        # Row comparison matches the (last_message_at DESC, id DESC) index exactly.
        where.append(f"(c.last_message_at, c.id) < (${args + 1}, ${args + 2})")
    # Built from constants only (the filters choose clauses; their values are parameters).
    return (
        "SELECT c.id, c.instance_id, c.contact_id, ct.wa_id, ct.name AS contact_name, c.status, "  # noqa: S608
        "c.last_message_at, c.last_message_preview, c.last_message_direction, c.unread_count, c.last_seq "
        "FROM conversations c JOIN contacts ct ON ct.id = c.contact_id "
        f"WHERE {' AND '.join(where)} ORDER BY c.last_message_at DESC, c.id DESC LIMIT $2"
    )


def _conversation_out(row: asyncpg.Record) -> ConversationOut:
    return ConversationOut(
        id=row["id"],
        instance_id=row["instance_id"],
        contact=ContactOut(id=row["contact_id"], wa_id=row["wa_id"], name=row["contact_name"]),
        status=row["status"],
        last_message_at=row["last_message_at"],
        last_message_preview=row["last_message_preview"],
        last_message_direction=row["last_message_direction"],
        unread_count=row["unread_count"],
        last_seq=row["last_seq"],
    )


async def inbox_page(
    conn: DriverConnection,
    org_id: UUID,
    *,
    instance_id: UUID | None,
    status: ConversationStatus | None,
    unread_only: bool,
    cursor: ActivityCursor | None,
    limit: int,
) -> ConversationPage:
    args: list[UUID | str | int | datetime] = [org_id, limit + 1]
    if instance_id is not None:
        args.append(instance_id)
    if status is not None:
        args.append(status.value)
    if cursor is not None:
        args += [cursor.at, cursor.id]
    sql = inbox_sql(instance_id is not None, status is not None, unread_only, cursor is not None)
    rows = await conn.fetch(sql, *args)
    items = [_conversation_out(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = ActivityCursor(at=last.last_message_at, id=last.id).encode()
    return ConversationPage(items=items, next_cursor=next_cursor)


__all__ = ["history_page", "inbox_page", "inbox_sql"]
