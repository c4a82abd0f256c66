from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from app.lib.schema import Schema

# Postgres text cannot hold U+0000: refuse it at validation rather than fail the query with a 500.
NO_NUL = msgspec.Meta(pattern=r"^[^\x00]*$")


class LoginRequest(Schema):
    email: Annotated[str, NO_NUL]
    password: str


class AgentOut(Schema):
    id: UUID
    org_id: UUID
    email: str
    name: str
    role: str


class LoginResponse(Schema):
    access_token: str
    token_type: str
    expires_in: int
    agent: AgentOut
