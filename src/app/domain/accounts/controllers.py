from __future__ import annotations

from typing import Annotated

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body

from app.domain.accounts.auth import TokenIssuer
from app.domain.accounts.schemas import AgentOut, LoginRequest, LoginResponse
from app.domain.accounts.services import AgentService
from app.domain.accounts.throttle import throttle_logins
from app.lib.deps import DbSession
from app.lib.openapi import problems


class AuthController(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post(
        "/login",
        status_code=200,
        summary="Exchange e-mail and password for a bearer token",
        guards=[throttle_logins],  # before the body is even parsed: a flood costs no scrypt
        responses=problems(
            400,
            (401, "Wrong e-mail or password"),
            413,
            (429, "Too many login attempts from this client; retry after `Retry-After` seconds"),
            503,
        ),
    )
    async def login(
        self,
        data: Annotated[LoginRequest, Body()],
        db_session: DbSession,
        token_issuer: NamedDependency[TokenIssuer],
    ) -> LoginResponse:
        agent = await AgentService(session=db_session).authenticate(data.email, data.password)
        if agent is None:
            raise NotAuthorizedException("wrong e-mail or password")
        return LoginResponse(
            access_token=token_issuer.issue(agent),
            token_type="Bearer",
            expires_in=token_issuer.ttl_seconds,
            agent=AgentOut(
                id=agent.id, org_id=agent.org_id, email=agent.email, name=agent.name, role=agent.role.value
            ),
        )
