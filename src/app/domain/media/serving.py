"""What a media URL answers. The row says the state; the stored object (keyed by its sha256) is the file.

Stored objects never change, so the ETag is the content hash and browsers may keep them forever
(`private`: they are a customer's files). Documents are sent as attachments under a safe name, and
`nosniff` stops a browser from reinterpreting any of them.

A ready media whose object is gone from storage (removed, or a storage URL pointing elsewhere) answers
500 "media file missing from storage" and is logged as an error: the row and the store disagree, which
only an operator can mend. It used to answer "503 database unavailable" with Postgres up (issue 14): the
store's FileNotFoundError is an OSError, which the error mapping then took for a lost connection.
"""

from __future__ import annotations

import mimetypes
import re
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID

from litestar import Response
from litestar.response import Stream
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Media, MediaState
from app.domain.conversations.schemas import media_url
from app.domain.media.storage import MediaStorage, original_key, thumbnail_key
from app.lib.domain_errors import Gone, Inconsistent, NotFound
from app.lib.schema import Schema

CACHE_FOREVER = "private, max-age=31536000, immutable"
_INLINE_KINDS = ("image/", "audio/", "video/")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]+")


class StoredMediaMissing(Inconsistent):
    """The row says ready; the store has no object under its key."""

    def __init__(self, media_id: UUID, key: str) -> None:
        super().__init__("media file missing from storage")
        self.media_id, self.key = media_id, key


class PendingMedia(Schema):
    """A 202's body: the file is still being fetched or processed; ask the same URL again."""

    id: UUID
    state: Literal["pending"]
    url: str


def content_disposition(media: Media, content_type: str) -> str:
    inline = content_type.startswith(_INLINE_KINDS)
    extension = mimetypes.guess_extension(content_type) or ""
    original = (media.filename or "").strip()
    ascii_name = _UNSAFE_FILENAME.sub("_", original).strip(" ._")[:100] or f"{media.id}{extension}"
    value = f'{"inline" if inline else "attachment"}; filename="{ascii_name}"'
    if original and ascii_name != original:
        value += f"; filename*=UTF-8''{quote(original[:200], safe='')}"
    return value


class MediaFiles:
    def __init__(self, session: AsyncSession, storage: MediaStorage) -> None:
        self.session = session
        self.storage = storage

    async def serve(
        self, org_id: UUID, media_id: UUID, if_none_match: str | None, *, thumbnail: bool = False
    ) -> Response[Any] | Stream:
        media = await self.session.scalar(select(Media).where(Media.id == media_id, Media.org_id == org_id))
        if media is None:
            raise NotFound("media not found")
        if media.state is MediaState.PENDING:
            return Response(
                PendingMedia(id=media.id, state="pending", url=media_url(media.id)),
                status_code=202,
                headers={"Retry-After": "2"},
            )
        if media.state is MediaState.FAILED or media.content_sha256 is None:
            raise Gone(f"media could not be processed: {media.error or 'unknown reason'}")
        if thumbnail and not media.has_thumbnail:
            raise NotFound("this media has no thumbnail")
        sha = media.content_sha256
        key = thumbnail_key(sha) if thumbnail else original_key(sha)
        etag = f'"{sha}-thumb"' if thumbnail else f'"{sha}"'
        headers = {"ETag": etag, "Cache-Control": CACHE_FOREVER, "X-Content-Type-Options": "nosniff"}
        if if_none_match is not None and (
            if_none_match.strip() == "*" or etag in (tag.strip() for tag in if_none_match.split(","))
        ):
            return Response(content=None, status_code=304, headers=headers)
        content_type = "image/webp" if thumbnail else media.content_type or "application/octet-stream"
        try:
            headers["Content-Length"] = str(await self.storage.size(key))
            chunks = await self.storage.stream(key)  # a missing object fails here, before the response starts
        except FileNotFoundError:
            raise StoredMediaMissing(media.id, key) from None
        headers["Content-Disposition"] = content_disposition(media, content_type)
        return Stream(chunks, media_type=content_type, headers=headers)
