from __future__ import annotations

from uuid import UUID

import msgspec

from app.lib.schema import Schema


class LoginRequest(Schema):
    email: str = msgspec.field()
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
