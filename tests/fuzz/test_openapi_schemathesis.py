"""Schemathesis against the app's own OpenAPI document, every operation but the webhooks and /ws.

The app (`create_app(settings)`) runs in-process behind Schemathesis's ASGI transport, with a deployment key
prefix of its own (its jobs land in queues no worker of another test consumes). A tenant of its own has one
WPPConnect conversation with a text and an image (so a media row), an instance able to send, and real
logins: requests carry the agent's JWT (the admin's for the admin-only /stats). Cases are generated from the
schema, positive and negative, and also with the tenant's real conversation and media ids in the path, so the
200 paths are exercised and not only 404s.

Checked per response:
- `not_a_server_error`: never a 5xx — except /ready, whose 503 means "no worker reported" and is all it can
  say in a test without workers (checked to say exactly that; the 503 is documented, with its body);
- `status_code_conformance`, `content_type_conformance`, `response_schema_conformance`,
  `response_headers_conformance`: every status, media type (errors: `application/problem+json`), body and
  header sent is the one documented (app.lib.openapi makes the document say so);
- `ignored_auth`: an operation documented as needing the bearer token refuses a request without one, or
  with a wrong one (Schemathesis probes both); public operations are documented without the requirement;
- every 4xx/5xx carries its own status in the problem document (the app's error contract).

Left out, and why: `positive_data_acceptance` (an opaque cursor or before_seq+after_seq together are
schema-valid and rightly refused, and are documented as 400), `negative_data_rejection` (unknown query
parameters are ignored, as everywhere in Litestar).

Deterministic (derandomize, no example database) and bounded (30 examples per operation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from litestar import Litestar
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.config import Settings
from app.db.models import WhatsAppInstance
from app.server.core import create_app
from tests.factories import PASSWORD, Tenant, create_tenant
from tests.webhooks import fixture_for, signed_headers

T = TypeVar("T")
BASE = "http://testserver"

# Every operation in the schema, minus the webhooks (tests/fuzz/test_adapters_hypothesis.py) and /ws (not
# in the schema). test_every_operation_is_fuzzed fails when a route is added without being listed here.
OPERATIONS = [
    ("POST", "/api/auth/login"),
    ("GET", "/api/whatsapp-optimized/conversations"),
    ("GET", "/api/whatsapp-optimized/conversations/{conversation_id}"),
    ("POST", "/api/whatsapp-optimized/conversations/{conversation_id}/read"),
    ("GET", "/api/whatsapp-optimized/messages/{conversation_id}"),
    ("POST", "/api/whatsapp-optimized/messages/{conversation_id}"),
    ("GET", "/api/whatsapp-optimized/media/{media_id}"),
    ("GET", "/api/whatsapp-optimized/media/{media_id}/thumbnail"),
    ("GET", "/api/whatsapp-optimized/stats"),
    ("GET", "/api/whatsapp-optimized/websocket/info"),
    ("GET", "/health"),
    ("GET", "/ready"),
]
NOT_FUZZED_HERE = {
    ("GET", "/api/webhooks/{gateway}/{instance}"),
    ("POST", "/api/webhooks/{gateway}/{instance}"),
}

ADMIN_ONLY = {("GET", "/api/whatsapp-optimized/stats")}

SCHEMATHESIS_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]

FUZZ = hypothesis.settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def _in_own_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a loop of its own thread: pytest-asyncio's loop is not running in a sync test."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make()).result()


@dataclass(frozen=True)
class Api:
    app: Litestar
    schema: Any
    agent_headers: dict[str, str]
    admin_headers: dict[str, str]
    conversation_id: str
    media_id: str
    database_url: str


def _seed_tenant(settings: Settings) -> Tenant:
    async def seed() -> Tenant:
        engine = create_async_engine(settings.db.url)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                tenant = await create_tenant(session)
                # Able to send (the send job itself waits in a queue no worker of this test consumes).
                await session.execute(
                    update(WhatsAppInstance)
                    .where(WhatsAppInstance.id == tenant.instance("wppconnect").id)
                    .values(api_base_url="http://127.0.0.1:9", api_token="fuzz-token")
                )
                await session.commit()
                return tenant
        finally:
            await engine.dispose()

    return _in_own_loop(seed)


def _login(client: Any, email: str) -> dict[str, str]:
    response = client.post(f"{BASE}/api/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture(scope="module")
def api(settings: Settings) -> Iterator[Api]:
    own = dataclasses.replace(
        settings, redis=dataclasses.replace(settings.redis, key_prefix=f"{settings.redis.key_prefix}-fuzz")
    )
    tenant = _seed_tenant(settings)
    app = create_app(own)
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    instance = tenant.instance("wppconnect")
    with asgi.get_client(app) as client:
        for name in ("onmessage_text", "onmessage_image_base64"):
            body = json.dumps(fixture_for("wppconnect", name, instance)).encode()
            response = client.post(
                f"{BASE}/api/webhooks/wppconnect/{instance.name}",
                data=body,
                headers=signed_headers("wppconnect", body, instance),
            )
            assert response.status_code == 200 and response.json()["created"] == 1, response.text
        agent_headers = _login(client, tenant.agent.email)
        admin_headers = _login(client, tenant.admin.email)
        conversations = client.get(f"{BASE}/api/whatsapp-optimized/conversations", headers=agent_headers)
        conversation_id = conversations.json()["items"][0]["id"]
        page = client.get(f"{BASE}/api/whatsapp-optimized/messages/{conversation_id}", headers=agent_headers)
        media_id = next(m["media"]["id"] for m in page.json()["items"] if m["media"])
    try:
        yield Api(app, schema, agent_headers, admin_headers, conversation_id, media_id, settings.db.url)
    finally:
        asgi.shutdown_lifespans()


def _header(response: Any, name: str) -> str:
    """A header of a Schemathesis response (values are lists) or of a requests one (values are strings)."""
    value = next((v for k, v in response.headers.items() if k.lower() == name), "")
    return value[0] if isinstance(value, list) else value


def _assert_error_contract(response: Any) -> None:
    if response.status_code < 400:
        return
    content_type = _header(response, "content-type")
    assert content_type.startswith("application/problem+json"), f"{response.status_code}: {content_type}"
    problem = json.loads(response.content)
    assert problem["status"] == response.status_code and problem["title"], problem


def test_every_operation_is_fuzzed(api: Api):
    in_schema = {(op.ok().method.upper(), op.ok().path) for op in api.schema.get_all_operations()}
    assert in_schema - NOT_FUZZED_HERE == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms(api: Api, method: str, path: str):
    operation = api.schema[path][method]
    known_ids = {"conversation_id": api.conversation_id, "media_id": api.media_id}
    real_path = {name: value for name, value in known_ids.items() if f"{{{name}}}" in path}
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if real_path:  # first, so most cases reach the tenant's rows rather than a 404
        strategies = [
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real_path),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=real_path),
            *strategies,
        ]
    headers = api.admin_headers if (method, path) in ADMIN_ONLY else api.agent_headers
    checks = SCHEMATHESIS_CHECKS
    if path == "/ready":
        checks = [check for check in checks if check is not not_a_server_error]

    @FUZZ
    @given(case=st.one_of(strategies))
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        hypothesis.event(f"{response.status_code}")  # what was reached: pytest --hypothesis-show-statistics
        case.validate_response(response, checks=checks)
        if path == "/ready" and response.status_code == 503:
            # Not a problem document but the Health one, saying which part is missing: only the workers.
            health = json.loads(response.content)
            assert health["database"] == "ok" and health["redis"] == "ok", health
            assert set(health["workers"].values()) == {"no recent health check"}, health
        else:
            _assert_error_contract(response)

    run()


# --- what the fuzzing found, one minimal request each -------------------------------------------------------


def test_login_with_nul_in_email_is_a_client_error(api: Api):
    """U+0000 in the e-mail reaches Postgres, which refuses it: 500 before any authentication."""
    with asgi.get_client(api.app) as client:
        response = client.post(f"{BASE}/api/auth/login", json={"email": "\x00", "password": "x"})
    assert response.status_code in (400, 401), response.text
    _assert_error_contract(response)


def test_send_with_nul_in_text_is_a_client_error(api: Api):
    """U+0000 in a sent text reaches the messages.body column: 500, and nothing must be stored."""

    async def messages_of_conversation() -> int:
        engine = create_async_engine(api.database_url)
        try:
            async with engine.connect() as conn:
                query = text("SELECT count(*) FROM messages WHERE conversation_id = :id")
                return int((await conn.execute(query, {"id": api.conversation_id})).scalar_one())
        finally:
            await engine.dispose()

    before = _in_own_loop(messages_of_conversation)
    with asgi.get_client(api.app) as client:
        response = client.post(
            f"{BASE}/api/whatsapp-optimized/messages/{api.conversation_id}",
            json={"text": "a\x00b", "client_message_id": "fuzz-nul"},
            headers=api.agent_headers,
        )
    assert response.status_code in (400, 422), response.text
    _assert_error_contract(response)
    assert _in_own_loop(messages_of_conversation) == before
