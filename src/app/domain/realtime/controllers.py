"""`GET /ws`: one socket per browser tab, authenticated by the login token in `?token=`.

Browsers cannot set headers on a WebSocket, hence the query parameter. The seed's `?userId=` named a user
without proving anything, so anyone could read anyone's inbox: it is refused. A token this process cannot
check now (Postgres unreachable, never verified here) closes the socket with 1013, try again later: not
4401, which tells a client its login is over (issue 12, finding 4).

An agent holds at most WS_MAX_SOCKETS_PER_AGENT sockets on a process (a few tabs); the next one is closed
with 4429 and logged (issue 12: 1,000 sockets were opened on one token in 3 s).
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import msgspec
import structlog
from litestar import WebSocket, get, websocket
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException

from app.config import Settings
from app.domain.accounts.auth import (
    AgentRequest,
    CurrentAgent,
    TokenNotCheckable,
    VerifiedTokens,
    verify_token,
)
from app.domain.conversations.reads import PageReader
from app.domain.realtime.connection import (
    CLOSE_FORBIDDEN,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    Connection,
)
from app.domain.realtime.frames import CLIENT_FRAME_TYPES, PROTOCOL_VERSION, SERVER_FRAME_TYPES, Ready
from app.domain.realtime.hub import Hub
from app.lib import metrics
from app.lib.query_token import AmbiguousQueryToken, query_token

log = structlog.get_logger()


class Refusal(NamedTuple):
    code: int
    reason: str


async def _authenticate(
    socket: WebSocket, settings: Settings, tokens: VerifiedTokens
) -> tuple[CurrentAgent, float] | Refusal:
    """(agent, token expiry) or why and how to refuse."""
    try:
        token = query_token(socket.scope["query_string"])
    except AmbiguousQueryToken:
        return Refusal(CLOSE_UNAUTHORIZED, "pass the token once, as a plain ?token=")
    if not token:
        if "userId" in socket.query_params:
            return Refusal(CLOSE_UNAUTHORIZED, "userId is not accepted; pass the login token as ?token=")
        return Refusal(CLOSE_UNAUTHORIZED, "missing token")
    try:
        decoded, agent = await verify_token(token, settings, tokens)
    except NotAuthorizedException:
        return Refusal(CLOSE_UNAUTHORIZED, "invalid, expired or revoked token")
    except TokenNotCheckable:
        return Refusal(CLOSE_TRY_AGAIN_LATER, "cannot verify the token now, retry later")
    return agent, decoded.exp.timestamp()


def _origin_allowed(socket: WebSocket, settings: Settings) -> bool:
    # Browsers always send Origin; a page on another site must not ride an agent's token.
    origin = socket.headers.get("origin")
    allowed = settings.app.cors_allowed_origins
    return origin is None or "*" in allowed or origin in allowed


@websocket("/ws", opt={"skip_auth": True})
async def realtime_socket(
    socket: WebSocket,
    settings: NamedDependency[Settings],
    hub: NamedDependency[Hub],
    verified_tokens: NamedDependency[VerifiedTokens],
) -> None:
    await socket.accept()
    if not _origin_allowed(socket, settings):
        await socket.close(code=CLOSE_FORBIDDEN, reason="origin not allowed")
        return
    authenticated = await _authenticate(socket, settings, verified_tokens)
    if isinstance(authenticated, Refusal):
        await socket.close(code=authenticated.code, reason=authenticated.reason)
        return
    agent, expires_at = authenticated
    connection = Connection(socket, agent, hub, hub.history, settings.realtime)
    if not hub.admit(connection):
        metrics.WS_SOCKETS_REFUSED.inc()
        log.warning(
            "websocket refused: too many sockets for this agent",
            user_id=str(agent.id),
            limit=settings.realtime.max_sockets_per_agent,
        )
        await socket.close(code=CLOSE_TOO_MANY_SOCKETS, reason="too many sockets for this agent")
        return
    started = time.monotonic()
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, expires_at - time.time()), connection.close_soon, CLOSE_UNAUTHORIZED, "token expired"
    )
    log.info(
        "websocket connected", connection_id=connection.id, user_id=str(agent.id), org_id=str(agent.org_id)
    )
    connection.send_frame(
        Ready(user_id=agent.id, connection_id=connection.id, heartbeat_s=settings.realtime.heartbeat_s)
    )
    try:
        await connection.run()
    finally:
        expiry.cancel()
        connection.cancel_tasks()
        hub.unregister(connection)
        code = connection.closing[0] if connection.closing else None
        log.info(
            "websocket disconnected",
            connection_id=connection.id,
            user_id=str(agent.id),
            seconds=round(time.monotonic() - started, 1),
            close_code=code,
        )


class WebsocketInfo(msgspec.Struct, frozen=True):
    """What a frontend needs to connect, and how busy this process's socket side is."""

    url_path: str
    auth: str
    protocol: int
    heartbeat_s: int
    client_frames: list[str]
    server_frames: list[str]
    process: dict[str, int]  # your organisation's sockets, users and rooms on the process that answered
    cache: dict[str, object]  # how fresh history/inbox reads are: what to expect after a reconnect


@get(
    "/api/whatsapp-optimized/websocket/info",
    summary="How to connect to /ws, your organisation's sockets on this process, how reads are cached",
)
async def websocket_info(
    request: AgentRequest,
    settings: NamedDependency[Settings],
    hub: NamedDependency[Hub],
    pages: NamedDependency[PageReader],
) -> WebsocketInfo:
    return WebsocketInfo(
        url_path="/ws",
        auth="?token=<access_token from POST /api/auth/login>",
        protocol=PROTOCOL_VERSION,
        heartbeat_s=settings.realtime.heartbeat_s,
        client_frames=sorted(CLIENT_FRAME_TYPES),
        server_frames=sorted(SERVER_FRAME_TYPES),
        process=hub.counts_for(request.user.org_id),  # never another organisation's figures
        cache={
            "memory_live": pages.cache.memory_live,
            "memory_max_bytes": settings.cache.memory_max_bytes,
            "memory_ttl_s": settings.cache.memory_ttl_s,
            "redis_ttl_s": settings.cache.redis_ttl_s,
            "cached_reads": ["first inbox page", "latest history page"],
        },
    )
