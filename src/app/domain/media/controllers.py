"""Serving stored media to agents: org-scoped, immutable by content (ETag = sha256), never processed here."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath
from litestar.response import Stream

from app.domain.accounts.auth import AgentRequest
from app.domain.media.serving import MediaFiles, PendingMedia
from app.domain.media.storage import MediaStorage
from app.lib.deps import DbSession
from app.lib.openapi import problems


def media_responses(file: ResponseSpec, not_found: str) -> dict[int, ResponseSpec]:
    """What both media URLs answer besides the file itself (MediaFiles.serve)."""
    return {
        200: file,
        202: ResponseSpec(
            PendingMedia, description="Still being processed; retry after `Retry-After` seconds"
        ),
        304: ResponseSpec(None, description="Not modified: If-None-Match names the current ETag"),
        **problems(
            (404, not_found),
            (410, "The media could not be fetched or processed"),
            (500, "The media is ready but its file is missing from storage"),
            503,
        ),
    }


class MediaController(Controller):
    path = "/api/whatsapp-optimized/media"
    tags = ["media"]

    @get(
        "/{media_id:uuid}",
        summary="The file: 200 when ready, 202 while pending, 410 if it failed",
        responses=media_responses(
            ResponseSpec(
                bytes,
                media_type="*/*",
                description="The file, in its own content type",
                generate_examples=False,
            ),
            "No such media in your organisation",
        ),
    )
    async def original(
        self,
        request: AgentRequest,
        db_session: DbSession,
        media_storage: NamedDependency[MediaStorage],
        media_id: FromPath[UUID],
    ) -> Response[Any] | Stream:
        files = MediaFiles(db_session, media_storage)
        return await files.serve(request.user.org_id, media_id, request.headers.get("if-none-match"))

    @get(
        "/{media_id:uuid}/thumbnail",
        summary="An image's WebP thumbnail (longest side 320 px)",
        responses=media_responses(
            ResponseSpec(
                bytes, media_type="image/webp", description="The thumbnail", generate_examples=False
            ),
            "No such media in your organisation, or it has no thumbnail",
        ),
    )
    async def thumbnail(
        self,
        request: AgentRequest,
        db_session: DbSession,
        media_storage: NamedDependency[MediaStorage],
        media_id: FromPath[UUID],
    ) -> Response[Any] | Stream:
        files = MediaFiles(db_session, media_storage)
        return await files.serve(
            request.user.org_id, media_id, request.headers.get("if-none-match"), thumbnail=True
        )
