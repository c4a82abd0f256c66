"""The seed's optimised routes: the inbox and history, read from Postgres, scoped by the caller's org."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, MediaType, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app.db.models import ConversationStatus
from app.domain.accounts.auth import AgentRequest
from app.domain.conversations.outbound import OutboundService
from app.domain.conversations.reads import PageReader
from app.domain.conversations.schemas import (
    ConversationOut,
    ConversationPage,
    MessageOut,
    MessagePage,
    ReadMarker,
    SendMessageRequest,
)
from app.domain.conversations.services import ConversationFilters, ConversationService
from app.domain.realtime.events import envelopes_for_outbound
from app.domain.realtime.publisher import EventPublisher
from app.lib.deps import DbSession
from app.lib.errors import problem
from app.lib.jobs import SEND_MESSAGE, JobQueue, send_job_id
from app.lib.openapi import problems
from app.lib.pagination import ActivityCursor

NOT_FOUND = (404, "No such conversation in your organisation")
PageLimit = Annotated[int, QueryParameter(ge=1, le=100, description="page size, at most 100")]
# seq is a BIGINT: a larger number is refused here (400, and documented) instead of failing in the driver.
SEQ_MAX = 2**63 - 1


class ConversationController(Controller):
    path = "/api/whatsapp-optimized"
    tags = ["conversations"]

    @get(
        "/conversations",
        summary="Conversations, most recent activity first (keyset paginated)",
        responses={
            200: ResponseSpec(ConversationPage, description="A page of conversations"),
            **problems((400, "A parameter does not validate, or the cursor is not one this API issued"), 503),
        },
    )
    async def list_conversations(
        self,
        request: AgentRequest,
        pages: NamedDependency[PageReader],
        instance_id: FromQuery[UUID | None] = None,
        status: FromQuery[ConversationStatus | None] = None,
        unread: FromQuery[bool] = False,
        cursor: FromQuery[str | None] = None,
        limit: PageLimit = 50,
    ) -> Response[bytes]:
        body = await pages.conversations(
            request.user.org_id,
            ConversationFilters(instance_id=instance_id, status=status, unread_only=unread),
            ActivityCursor.decode(cursor) if cursor else None,
            limit,
        )
        return Response(body, media_type=MediaType.JSON)

    @get(
        "/conversations/{conversation_id:uuid}",
        summary="One conversation",
        responses=problems(NOT_FOUND, 503),
    )
    async def get_conversation(
        self,
        request: AgentRequest,
        db_session: DbSession,
        conversation_id: FromPath[UUID],
    ) -> ConversationOut:
        return await ConversationService(db_session).get_conversation(request.user.org_id, conversation_id)

    @post(
        "/conversations/{conversation_id:uuid}/read",
        status_code=200,
        summary="Mark a conversation read",
        responses=problems(NOT_FOUND, 503),
    )
    async def mark_read(
        self,
        request: AgentRequest,
        db_session: DbSession,
        conversation_id: FromPath[UUID],
        publisher: NamedDependency[EventPublisher],
    ) -> ReadMarker:
        return await ConversationService(db_session, publisher).mark_read(
            request.user.org_id, conversation_id
        )

    @get(
        "/messages/{conversation_id:uuid}",
        summary="History: latest page, or before/after a seq",
        responses={
            200: ResponseSpec(MessagePage, description="A window of history in ascending seq"),
            **problems(
                (400, "A parameter does not validate, or before_seq and after_seq together"), NOT_FOUND, 503
            ),
        },
    )
    async def list_messages(
        self,
        request: AgentRequest,
        pages: NamedDependency[PageReader],
        conversation_id: FromPath[UUID],
        before_seq: Annotated[int | None, QueryParameter(ge=1, le=SEQ_MAX)] = None,
        after_seq: Annotated[int | None, QueryParameter(ge=0, le=SEQ_MAX)] = None,
        limit: PageLimit = 50,
    ) -> Response[bytes]:
        if before_seq is not None and after_seq is not None:
            raise problem(400, "use before_seq or after_seq, not both")
        body = await pages.messages(
            request.user.org_id, conversation_id, before_seq=before_seq, after_seq=after_seq, limit=limit
        )
        return Response(body, media_type=MediaType.JSON)

    @post(
        "/messages/{conversation_id:uuid}",
        summary="Send a text message (idempotent by client_message_id)",
        response_description="Stored as pending; the worker sends it",
        responses={
            200: ResponseSpec(
                MessageOut, description="A retry: the message first sent with this client_message_id"
            ),
            **problems(
                400, NOT_FOUND, 413, (422, "The conversation's instance has no credentials to send"), 503
            ),
        },
    )
    async def send_message(
        self,
        request: AgentRequest,
        db_session: DbSession,
        conversation_id: FromPath[UUID],
        data: JSONBody[SendMessageRequest],
        publisher: NamedDependency[EventPublisher],
        jobs: NamedDependency[JobQueue],
    ) -> Response[MessageOut]:
        outbound = await OutboundService(db_session).create(
            org_id=request.user.org_id,
            author_id=request.user.id,
            conversation_id=conversation_id,
            text=data.text,
            client_message_id=data.client_message_id,
        )
        if outbound.created:  # after commit: tell every open inbox and room, then hand it to the worker
            await publisher.publish(request.user.org_id, envelopes_for_outbound(outbound))
            await jobs.enqueue(
                SEND_MESSAGE, str(outbound.message.id), job_id=send_job_id(outbound.message.id)
            )
        return Response(outbound.message, status_code=201 if outbound.created else 200)
