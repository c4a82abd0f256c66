"""JWT authentication (Litestar's JWTAuth) and the guards built on it.

The token carries the agent's org and role, so authenticating a request costs no database query (a cached
page is served with zero queries). The price is that disabling an agent takes effect when the token expires:
keep JWT_TTL_SECONDS short.

A token's signature is checked once per process: `VerifiedTokens` remembers what it proved until the token
expires, so the next request with it costs a dict lookup instead of an HMAC and two base64/JSON decodes
(a third of a cached GET's time otherwise).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from app.config import Settings
from app.db.models import Agent, AgentRole


class CurrentAgent(msgspec.Struct, frozen=True):
    """Who is calling, as the token says."""

    id: UUID
    org_id: UUID
    role: AgentRole
    email: str


def agent_from_token(token: Token) -> CurrentAgent:
    """The agent a verified token speaks for; NotAuthorizedException if its claims are incomplete."""
    try:
        return CurrentAgent(
            id=UUID(token.sub),
            org_id=UUID(token.extras["org_id"]),
            role=AgentRole(token.extras["role"]),
            email=str(token.extras.get("email", "")),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise NotAuthorizedException("token is missing required claims") from exc


async def _current_agent_from_token(
    token: Token, _: ASGIConnection[Any, Any, Any, Any]
) -> CurrentAgent | None:
    return agent_from_token(token)  # async: Litestar would run a plain function in a worker thread


class VerifiedTokens:
    """Encoded tokens this process has verified, with what they proved, until each one expires (bounded)."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Token, CurrentAgent]] = OrderedDict()

    def get(self, encoded: str) -> tuple[Token, CurrentAgent] | None:
        entry = self._entries.get(encoded)
        if entry is None:
            return None
        expires_at, token, agent = entry
        if expires_at <= self._clock():
            del self._entries[encoded]
            return None
        return token, agent

    def add(self, encoded: str, token: Token, agent: CurrentAgent) -> None:
        self._entries[encoded] = (token.exp.timestamp(), token, agent)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


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
    return JWTAuth[CurrentAgent, Token](
        authentication_middleware_class=_remembering(tokens),
        token_secret=settings.auth.jwt_secret,
        algorithm=settings.auth.algorithm,
        retrieve_user_handler=_current_agent_from_token,
        default_token_expiration=timedelta(seconds=settings.auth.token_ttl_seconds),
        exclude=PUBLIC_PATHS,
        exclude_opt_key="skip_auth",
        require_claims=["exp", "sub"],
    )


class TokenIssuer:
    """Signs access tokens for agents with the app's JWT settings (injected into the login handler)."""

    def __init__(self, jwt_auth: JWTAuth[CurrentAgent, Token], ttl_seconds: int) -> None:
        self._jwt_auth = jwt_auth
        self.ttl_seconds = ttl_seconds

    def issue(self, agent: Agent) -> str:
        return self._jwt_auth.create_token(
            identifier=str(agent.id),
            token_extras={"org_id": str(agent.org_id), "role": agent.role.value, "email": agent.email},
        )


def requires_admin(connection: ASGIConnection[Any, CurrentAgent, Any, Any], _: BaseRouteHandler) -> None:
    if connection.user.role is not AgentRole.ADMIN:
        raise PermissionDeniedException("admin role required")
