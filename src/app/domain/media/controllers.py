"""Serving stored media to agents: org-scoped, immutable by content (ETag = sha256), never processed here."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Stream

from app.domain.accounts.auth import AgentRequest
from app.domain.media.serving import MediaFiles
from app.domain.media.storage import MediaStorage
from app.lib.deps import DbSession


class MediaController(Controller):
    path = "/api/whatsapp-optimized/media"
    tags = ["media"]

    @get("/{media_id:uuid}", summary="The file: 200 when ready, 202 while pending, 410 if it failed")
    async def original(
        self,
        request: AgentRequest,
        db_session: DbSession,
        media_storage: NamedDependency[MediaStorage],
        media_id: FromPath[UUID],
    ) -> Response[Any] | Stream:
        files = MediaFiles(db_session, media_storage)
        return await files.serve(request.user.org_id, media_id, request.headers.get("if-none-match"))

    @get("/{media_id:uuid}/thumbnail", summary="An image's WebP thumbnail (longest side 320 px)")
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
