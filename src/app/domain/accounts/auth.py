"""JWT authentication (Litestar's JWTAuth) and the guards built on it.

The token carries the agent's org, role and token generation, so authenticating a request costs no database
query once a process knows the token (a cached page is served with zero queries).

A token is verified once per process: its signature, and the agent's standing in Postgres (see
revocations.py). `VerifiedTokens` then remembers what it proved until the token expires, so the next request
with it costs two dict lookups — the memory, and the revocations this process has heard, which refuse the
token as soon as its agent is deactivated, demoted, moved, renamed, given a new password or deleted —
instead of an HMAC and two base64/JSON decodes (a third of a cached GET's time otherwise).

A token met for the first time while Postgres cannot be asked is answered 503 with Retry-After
(TokenNotCheckable), not 401: it may be fine, and the client should retry rather than log the agent out
(issue 12, finding 4).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, ServiceUnavailableException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from app.config import AuthSettings, Settings
from app.db.models import Agent, AgentRole
from app.domain.accounts.revocations import StandingUnavailable, TokenRevocations


class CurrentAgent(msgspec.Struct, frozen=True):
    """Who is calling, as the token says."""

    id: UUID
    org_id: UUID
    role: AgentRole
    email: str
    token_generation: int = 0  # tokens issued before the claim existed are generation 0


GENERATION_CLAIM = "gen"
STANDING_RETRY_AFTER_S = 5  # as a database-down 503 (app.lib.errors)


class TokenNotCheckable(ServiceUnavailableException):
    """A token this process has not verified before, while its agent's standing cannot be read."""

    def __init__(self) -> None:
        super().__init__(
            detail="cannot verify this token now, retry later",
            headers={"Retry-After": str(STANDING_RETRY_AFTER_S)},
        )


def agent_from_token(token: Token) -> CurrentAgent:
    """The agent a verified token speaks for; NotAuthorizedException if its claims are incomplete."""
    generation = token.extras.get(GENERATION_CLAIM, 0)
    if type(generation) is not int:
        raise NotAuthorizedException("token is missing required claims")
    try:
        return CurrentAgent(
            id=UUID(token.sub),
            org_id=UUID(token.extras["org_id"]),
            role=AgentRole(token.extras["role"]),
            email=str(token.extras.get("email", "")),
            token_generation=generation,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise NotAuthorizedException("token is missing required claims") from exc


async def standing_agent(token: Token, revocations: TokenRevocations) -> CurrentAgent | None:
    """The agent of a token whose signature was just verified, if Postgres says it still speaks for them."""
    agent = agent_from_token(token)
    try:
        admitted = await revocations.admits(agent.id, agent.token_generation)
    except StandingUnavailable as exc:
        raise TokenNotCheckable from exc
    return agent if admitted else None


class VerifiedTokens:
    """Encoded tokens this process has verified, with what they proved, until each one expires or its agent's
    tokens are revoked (bounded)."""

    def __init__(
        self, revocations: TokenRevocations, max_entries: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self.revocations = revocations
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Token, CurrentAgent]] = OrderedDict()

    def get(self, encoded: str) -> tuple[Token, CurrentAgent] | None:
        entry = self._entries.get(encoded)
        if entry is None:
            return None
        expires_at, token, agent = entry
        if expires_at <= self._clock() or self.revocations.refuses(agent.id, agent.token_generation):
            del self._entries[encoded]
            return None
        return token, agent

    def add(self, encoded: str, token: Token, agent: CurrentAgent) -> None:
        self._entries[encoded] = (token.exp.timestamp(), token, agent)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


async def verify_token(
    encoded: str, settings: Settings, tokens: VerifiedTokens
) -> tuple[Token, CurrentAgent]:
    """What Litestar's middleware does for REST, for a token that arrives another way (/ws's query string)."""
    known = tokens.get(encoded)
    if known is not None:
        return known
    token = Token.decode(
        encoded,
        secret=settings.auth.jwt_secret,
        algorithm=settings.auth.algorithm,
        require_claims=["exp", "sub"],
    )
    agent = await standing_agent(token, tokens.revocations)
    if agent is None:
        raise NotAuthorizedException("token revoked")
    tokens.add(encoded, token, agent)
    return token, agent


def _remembering(tokens: VerifiedTokens) -> type[JWTAuthenticationMiddleware]:
    class RememberingJWTMiddleware(JWTAuthenticationMiddleware):
        async def authenticate_token(
            self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
        ) -> AuthenticationResult:
            known = tokens.get(encoded_token)
            if known is not None:
                return AuthenticationResult(user=known[1], auth=known[0])
            result = await super().authenticate_token(encoded_token, connection)
            tokens.add(encoded_token, result.auth, result.user)
            return result

    return RememberingJWTMiddleware


# What an authenticated handler receives: `request.user` is the calling agent.
AgentRequest = Request[CurrentAgent, Token, State]

# Paths that answer without a token: webhooks are verified by their own signature or secret.
# /ws checks its own token (from the query string, where browsers can put it).
PUBLIC_PATHS = ["^/api/auth/login$", "^/api/webhooks/", "^/schema", "^/health$", "^/ready$", "^/ws$"]


def build_jwt_auth(settings: Settings, tokens: VerifiedTokens) -> JWTAuth[CurrentAgent, Token]:
    async def current_agent(token: Token, _: ASGIConnection[Any, Any, Any, Any]) -> CurrentAgent | None:
        return await standing_agent(token, tokens.revocations)

    return JWTAuth[CurrentAgent, Token](
        authentication_middleware_class=_remembering(tokens),
        token_secret=settings.auth.jwt_secret,
        algorithm=settings.auth.algorithm,
        retrieve_user_handler=current_agent,
        default_token_expiration=timedelta(seconds=settings.auth.token_ttl_seconds),
        exclude=PUBLIC_PATHS,
        exclude_opt_key="skip_auth",
        require_claims=["exp", "sub"],
    )


class TokenIssuer:
    """Signs access tokens for agents (the login handler's; tests and benchmarks mint theirs here)."""

    def __init__(self, auth: AuthSettings, ttl_seconds: int | None = None) -> None:
        self._auth = auth
        self.ttl_seconds = ttl_seconds if ttl_seconds is not None else auth.token_ttl_seconds

    def issue(self, agent: Agent) -> str:
        token = Token(
            sub=str(agent.id),
            exp=datetime.now(UTC) + timedelta(seconds=self.ttl_seconds),
            extras={
                "org_id": str(agent.org_id),
                "role": agent.role.value,
                "email": agent.email,
                GENERATION_CLAIM: agent.token_generation,
            },
        )
        return token.encode(secret=self._auth.jwt_secret, algorithm=self._auth.algorithm)


def requires_admin(connection: ASGIConnection[Any, CurrentAgent, Any, Any], _: BaseRouteHandler) -> None:
    if connection.user.role is not AgentRole.ADMIN:
        raise PermissionDeniedException("admin role required")
