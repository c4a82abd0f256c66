"""The served OpenAPI document says who may call each operation and what its errors look like.

Public operations carry no security requirement, every other one the bearer token and its 401, and both
agree with what the app does to a request without a token. Every documented error is an RFC 9457
`application/problem+json` ProblemDetails document (the one exception: /ready's 503 is its Health body).
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

Client = AsyncTestClient[Litestar]

BEARER = [{"BearerToken": []}]
PUBLIC = {
    ("POST", "/api/auth/login"),
    ("GET", "/api/webhooks/{gateway}/{instance}"),
    ("POST", "/api/webhooks/{gateway}/{instance}"),
    ("GET", "/health"),
    ("GET", "/ready"),
}
API = "/api/whatsapp-optimized"
AUTHENTICATED = {
    ("GET", f"{API}/conversations"),
    ("GET", f"{API}/conversations/{{conversation_id}}"),
    ("POST", f"{API}/conversations/{{conversation_id}}/read"),
    ("GET", f"{API}/messages/{{conversation_id}}"),
    ("POST", f"{API}/messages/{{conversation_id}}"),
    ("GET", f"{API}/media/{{media_id}}"),
    ("GET", f"{API}/media/{{media_id}}/thumbnail"),
    ("GET", f"{API}/stats"),
    ("GET", f"{API}/websocket/info"),
}
# Routes the document leaves out: the operators' /metrics (its own token) and the /ws WebSocket.
UNDOCUMENTED = ("/metrics", "/ws")
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
# Values that reach each handler (no 404 from the router) without naming anything that exists.
PATH_VALUES = {"conversation_id": str(uuid4()), "media_id": str(uuid4()), "gateway": "wppconnect"}


@pytest.fixture
async def document(client: Client) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def concrete(path: str) -> str:
    return path.format_map({**PATH_VALUES, "instance": f"nobody-{uuid4().hex[:8]}"})


async def test_public_operations_have_no_security_requirement(document: dict[str, Any]):
    found = operations(document)
    assert set(found) == PUBLIC | AUTHENTICATED, "a new operation: say above whether it is public"
    for key in PUBLIC:
        assert found[key]["security"] == [], key
    assert not any(path.startswith(UNDOCUMENTED) for path in document["paths"])


async def test_every_other_operation_requires_the_bearer_token_and_documents_its_401(
    document: dict[str, Any],
):
    assert document["components"]["securitySchemes"]["BearerToken"]["scheme"] == "Bearer"
    found = operations(document)
    for key in AUTHENTICATED:
        operation = found[key]
        assert operation["security"] == BEARER, key
        assert operation["responses"]["401"]["content"] == PROBLEM, key


async def test_the_document_agrees_with_what_a_request_without_a_token_gets(
    client: Client, document: dict[str, Any]
):
    for (method, path), operation in operations(document).items():
        response = await client.request(method, concrete(path))
        is_jwt_refusal = response.status_code == 401 and "JWT" in response.json().get("detail", "")
        assert is_jwt_refusal == (operation["security"] == BEARER), (method, path, response.text)
        if is_jwt_refusal:
            assert response.headers["content-type"] == "application/problem+json"


async def test_every_error_response_is_a_problem_document(document: dict[str, Any]):
    errors = 0
    for (method, path), operation in operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) < 400 or (method, path, status) == ("GET", "/ready", "503"):
                continue
            errors += 1
            assert response["content"] == PROBLEM, (method, path, status)
            assert response["description"], (method, path, status)
    assert errors > 40  # every operation but /health and /ready documents some
    problem = document["components"]["schemas"]["ProblemDetails"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert problem["properties"]["status"] == {"type": "integer"}


async def test_a_real_error_is_the_documented_problem_document(client: Client, document: dict[str, Any]):
    """The contract above, end to end: a validation error's body has the ProblemDetails fields."""
    response = await client.post("/api/auth/login", json={"email": 1})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    properties = document["components"]["schemas"]["ProblemDetails"]["properties"]
    assert set(body) <= set(properties) and body["status"] == 400 and body["errors"], body
