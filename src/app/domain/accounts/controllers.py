from __future__ import annotations

from typing import Annotated

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body

from app.domain.accounts.auth import TokenIssuer
from app.domain.accounts.login_slots import LoginSlots
from app.domain.accounts.schemas import AgentOut, LoginRequest, LoginResponse
from app.domain.accounts.services import AgentService
from app.domain.accounts.throttle import LoginThrottle, throttle_logins
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
            (429, "Too many attempts from this client, or failures for this account (Retry-After)"),
            (503, "The database, or this process's share of logins, is busy; retry after `Retry-After`"),
        ),
    )
    async def login(
        self,
        data: Annotated[LoginRequest, Body()],
        db_session: DbSession,
        token_issuer: NamedDependency[TokenIssuer],
        login_throttle: NamedDependency[LoginThrottle],
        login_slots: NamedDependency[LoginSlots],
    ) -> LoginResponse:
        # The account's failure budget is taken before the password is checked, given back on success.
        reservation = await login_throttle.reserve_account(data.email)
        try:
            async with login_slots.taken():
                agent = await AgentService(session=db_session).authenticate(data.email, data.password)
        except BaseException:
            await reservation.settle(failed=False)  # not judged (database or slots busy)
            raise
        await reservation.settle(failed=agent is None)
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
