"""Schemathesis against the app's own OpenAPI document, every operation but /ws (not in the schema).

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

Unauthenticated, as an attacker holding no secret (issue 12: each of these was a 500 with a traceback): the
login, and both webhook routes with generated gateways and instance names as well as the tenant's real
ones, generated query strings (`token`, `hub.*`, anything), no / wrong secrets or a well-formed wrong
signature, and hostile bodies (nesting past the recursion limit, lone surrogates, NUL, random bytes, real
gateway payloads). None may answer 5xx or 2xx, nor write anything. The login and send routes also get
those hostile bodies in place of the generated ones.

Left out, and why: `positive_data_acceptance` (an opaque cursor or before_seq+after_seq together are
schema-valid and rightly refused, and are documented as 400), `negative_data_rejection` (unknown query
parameters are ignored, as everywhere in Litestar).

Deterministic (derandomize, no example database) and bounded (30 examples per operation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
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
from tests.fuzz.payloads import GATEWAYS, JSON_VALUES, bodies, encode
from tests.kit.data import fixture_for, signed_headers
from tests.kit.factories import PASSWORD, Tenant, create_tenant

T = TypeVar("T")
BASE = "http://testserver"

# Every operation in the schema (/ws is not in it). test_every_operation_is_fuzzed fails when a route is
# added without being listed here. Verified webhook bodies: tests/fuzz/test_adapters_hypothesis.py.
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
WEBHOOK = "/api/webhooks/{gateway}/{instance}"
WEBHOOK_OPERATIONS = [("POST", WEBHOOK), ("GET", WEBHOOK)]

ADMIN_ONLY = {("GET", "/api/whatsapp-optimized/stats")}
PUBLIC = {("POST", "/api/auth/login"), ("GET", "/health"), ("GET", "/ready")}  # fuzzed with no token
WITH_BODY = {("POST", "/api/auth/login"), ("POST", "/api/whatsapp-optimized/messages/{conversation_id}")}

# Bodies no schema describes: nesting past the recursion limit (as arrays, objects, under a key), JSON with
# lone surrogates, NUL, huge numbers and deep values (tests/fuzz/payloads.py), random bytes.
HOSTILE_BODIES: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from([1_100, 5_000, 100_000]).map(lambda depth: b"[" * depth + b"]" * depth),
    st.sampled_from([1_100, 100_000]).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from([1_100, 100_000]).map(lambda depth: b'{"text":' + b"[" * depth + b"]" * depth + b"}"),
    st.builds(encode, JSON_VALUES, ascii_only=st.booleans()),
    st.binary(max_size=64),
)
# No secret, a wrong one, a well-formed wrong signature (Cloud API then reads and hashes the body).
FORGED_HEADERS = st.sampled_from(
    [
        {},
        {"X-Webhook-Secret": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": "sha1=00"},
    ]
)
# Paths of our own besides the generated ones: a real gateway, and a name with control characters (NUL
# included), non-ASCII, slashes, or past the column's 100 characters.
WEBHOOK_PATHS = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "gateway": st.sampled_from(["cloudapi", *GATEWAYS]),  # the one with a GET handshake, twice
            "instance": st.one_of(
                st.text(st.characters(codec="utf-8"), max_size=110),
                st.builds(
                    "{}{}{}".format,
                    st.text(max_size=8),
                    st.sampled_from(
                        ["\x00", "\x00", "\x00", "\n", "\x7f", "\x85", "n" * 101]
                    ),  # NUL: Postgres refuses it
                    st.text(max_size=8),
                ),
            ),
        }
    ),
)
WEBHOOK_QUERIES = st.dictionaries(
    st.sampled_from(["token", "TOKEN", "hub.mode", "hub.verify_token", "hub.challenge"])
    | st.text(max_size=6),
    st.sampled_from(["subscribe", "", "\x00", "x" * 300]) | st.text(max_size=12),
    max_size=4,
)

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
    tenant: Tenant


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
        yield Api(
            app, schema, agent_headers, admin_headers, conversation_id, media_id, settings.db.url, tenant
        )
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
    assert in_schema == set(OPERATIONS) | set(WEBHOOK_OPERATIONS)


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
    if (method, path) in PUBLIC:
        headers = {}
    checks = SCHEMATHESIS_CHECKS
    if path == "/ready":
        checks = [check for check in checks if check is not not_a_server_error]
    # One case in four, a body no schema describes instead of the generated one.
    hostile = (
        st.one_of(st.none(), st.none(), st.none(), HOSTILE_BODIES)
        if (method, path) in WITH_BODY
        else st.none()
    )

    @FUZZ
    @given(case=st.one_of(strategies), body=hostile)
    def run(case: Any, body: bytes | None) -> None:
        if body is None:
            response = case.call(headers=headers)
        else:
            response = case.call(headers={**headers, "Content-Type": "application/json"}, data=body)
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


def _message_count(database_url: str, org_id: Any) -> int:
    async def count() -> int:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                query = text("SELECT count(*) FROM messages WHERE org_id = :org")
                return int((await conn.execute(query, {"org": org_id})).scalar_one())
        finally:
            await engine.dispose()

    return _in_own_loop(count)


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_webhook_route_without_a_secret_conforms(api: Api, method: str):
    """Generated and real gateway/instance paths, queries and bodies, no valid secret: a documented 4xx."""
    operation = api.schema[WEBHOOK][method]
    real = {g: {"gateway": g, "instance": api.tenant.instance(g).name} for g in GATEWAYS}
    strategies = [operation.as_strategy(GenerationMode.POSITIVE, path_parameters=p) for p in real.values()]
    strategies += [operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    payloads = [
        bodies(g).map(lambda b, i=api.tenant.instance(g): b.for_instance(i.name, i.phone_number_id))
        for g in GATEWAYS
    ]
    body_strategy = st.one_of(HOSTILE_BODIES, *payloads) if method == "POST" else st.none()
    before = _message_count(api.database_url, api.tenant.org_id)
    answers: Counter[int] = Counter()

    @hypothesis.settings(FUZZ, max_examples=60)
    @given(
        case=st.one_of(strategies),
        path=WEBHOOK_PATHS,
        query=WEBHOOK_QUERIES,
        forged=FORGED_HEADERS,
        body=body_strategy,
    )
    def run(
        case: Any,
        path: dict[str, str] | None,
        query: dict[str, str],
        forged: dict[str, str],
        body: bytes | None,
    ) -> None:
        if path is not None:
            case.path_parameters = path
        extra = {} if body is None else {"data": body}
        response = case.call(headers={"Content-Type": "application/json", **forged}, params=query, **extra)
        hypothesis.event(f"{response.status_code}")
        answers[response.status_code] += 1
        case.validate_response(response, checks=SCHEMATHESIS_CHECKS)
        _assert_error_contract(response)
        assert response.status_code >= 400, f"{response.status_code} without a secret: {response.text[:200]}"

    run()
    print(f"{method} {WEBHOOK} without a secret: answers {dict(sorted(answers.items()))}")
    assert _message_count(api.database_url, api.tenant.org_id) == before


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
