"""Limits and hardening: the login rate limit, request body sizes, WebSocket frame size, password storage,
media paths, where media downloads may go (SSRF), and which origins may use the API from a browser.

Real API processes serve the HTTP and WebSocket cases (uvicorn's own body and frame handling included).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Agent, AgentRole, Media
from app.domain.accounts.passwords import hash_password, verify_password
from app.domain.accounts.services import AgentService
from app.domain.gateways.destinations import RefusedDestination, check_destination
from app.domain.gateways.media import FetchFailed, FetchTarget, fetch_media
from app.domain.media.storage import MediaStorage, original_key, thumbnail_key
from app.server.core import DEFAULT_MAX_BODY_BYTES
from tests.fake_gateway import FakeGateway, Reply, status
from tests.kit.clients import WsClient
from tests.kit.data import fixture_for, signed_headers, with_message_id
from tests.kit.factories import OrganizationFactory, create_tenant
from tests.kit.media import PATHS, REFS, media_info
from tests.kit.processes import ApiProcess
from tests.kit.raw_http import RawServer, redirect
from tests.security.support import (
    API,
    INBOX,
    LOGIN_LIMIT,
    WEBHOOK_LIMIT,
    Client,
    Orgs,
    Served,
    bearer,
    history,
    login,
    prime_fast_path,
    row_counts,
    valid_token,
    ws_outcome,
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        yield client


def assert_problem(response: httpx.Response, status_code: int) -> None:
    assert response.status_code == status_code, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == status_code


# --- login rate limit -----------------------------------------------------------------------------------


async def test_logins_beyond_the_limit_are_429_on_every_process(
    processes: list[ApiProcess], session: AsyncSession, http: httpx.AsyncClient
):
    tenant = await create_tenant(session)
    email = tenant.agent.email
    for attempt in range(LOGIN_LIMIT):  # guesses, spread over both processes
        response = await http.post(
            f"{processes[attempt % 2].base_url}/api/auth/login",
            json={"email": email, "password": f"guess {attempt}"},
        )
        assert_problem(response, 401)
    for process in processes:
        for body, headers in [
            ({"email": email, "password": "correct horse battery staple"}, {}),  # even the right password
            ({"email": "someone.else@example.com", "password": "x"}, {}),  # any account, from this client
            (
                {"email": email, "password": "guess"},
                {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"},
            ),
            ({"email": email, "password": "guess"}, {"Forwarded": "for=203.0.113.10"}),
        ]:
            response = await http.post(f"{process.base_url}/api/auth/login", json=body, headers=headers)
            assert_problem(response, 429)
            assert int(response.headers["ratelimit-reset"]) > 0  # when to try again
            assert "access_token" not in response.text
    # Only logins are processes.
    assert (await http.get(f"{processes[0].base_url}/health")).status_code == 200


# --- request bodies ----------------------------------------------------------------------------------------


async def chunks(total: int, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    """`total` bytes sent with Transfer-Encoding: chunked (no Content-Length to refuse up front)."""
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        yield b" " * piece
        sent += piece


def json_of_size(size: int, **fields: str) -> bytes:
    """A JSON object of exactly `size` bytes (its `text` padded)."""
    skeleton = json.dumps({**fields, "text": ""}).encode()
    return json.dumps({**fields, "text": "x" * (size - len(skeleton))}).encode()


async def test_rest_bodies_over_1_mib_are_413_and_store_nothing(
    processes: list[ApiProcess],
    world: Orgs,
    settings: Settings,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    client: Client,
):
    process = processes[0]
    a = world.a
    url = f"{process.base_url}{history(a.conversation_id)}"
    headers = {**bearer(valid_token(settings, a.tenant)), "content-type": "application/json"}
    before = await row_counts(engine, a.org_id)

    at_limit = json_of_size(DEFAULT_MAX_BODY_BYTES, client_message_id="big-1")
    response = await http.post(url, content=at_limit, headers=headers)
    assert_problem(response, 400)  # read and judged: the text is too long, not the body
    over = json_of_size(DEFAULT_MAX_BODY_BYTES + 1, client_message_id="big-2")
    assert_problem(await http.post(url, content=over, headers=headers), 413)
    streamed = await http.post(url, content=chunks(DEFAULT_MAX_BODY_BYTES + 64 * 1024), headers=headers)
    assert_problem(streamed, 413)
    # The login in-process: through the processes it would count against their low login limit.
    big_login = json_of_size(DEFAULT_MAX_BODY_BYTES + 1, email=a.tenant.agent.email)
    response = await client.post(
        "/api/auth/login", content=big_login, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)
    assert await row_counts(engine, a.org_id) == before


async def test_webhook_bodies_over_the_limit_are_413_and_store_nothing(
    processes: list[ApiProcess], session: AsyncSession, engine: AsyncEngine, http: httpx.AsyncClient
):
    tenant = await create_tenant(session)
    instance = tenant.instance("wppconnect")
    url = f"{processes[0].base_url}/api/webhooks/wppconnect/{instance.name}"

    def body_of_size(size: int, message_id: str) -> bytes:
        data = with_message_id(
            "wppconnect", fixture_for("wppconnect", "onmessage_text", instance), message_id
        )
        data["body"] = ""
        data["body"] = "x" * (size - len(json.dumps(data).encode()))
        body = json.dumps(data).encode()
        assert len(body) == size
        return body

    over = body_of_size(WEBHOOK_LIMIT + 1, "BIG0001")
    assert_problem(
        await http.post(url, content=over, headers=signed_headers("wppconnect", over, instance)), 413
    )
    # Without credentials: refused (for its size or for the missing secret), and nothing stored either way.
    anonymous = await http.post(url, content=over, headers={"content-type": "application/json"})
    assert anonymous.status_code in (401, 413), anonymous.text
    streamed = await http.post(
        url, content=chunks(WEBHOOK_LIMIT + 64 * 1024), headers=signed_headers("wppconnect", b"", instance)
    )
    assert_problem(streamed, 413)
    assert await row_counts(engine, tenant.org_id) == {
        "messages": 0,
        "conversations": 0,
        "contacts": 0,
        "media": 0,
    }

    at_limit = body_of_size(WEBHOOK_LIMIT, "BIG0002")
    accepted = await http.post(
        url, content=at_limit, headers=signed_headers("wppconnect", at_limit, instance)
    )
    assert accepted.status_code == 200 and accepted.json()["created"] == 1, accepted.text


# --- WebSocket frames ------------------------------------------------------------------------------------


async def test_websocket_frames_over_the_size_limit_are_refused_and_the_socket_survives(
    processes: list[ApiProcess], world: Orgs, settings: Settings
):
    limit = settings.realtime.max_frame_bytes
    client = await WsClient.connect(processes[0].ws_url, valid_token(settings, world.a.tenant))
    assert (await client.recv_json())["type"] == "ready"

    def ping_of(size: int) -> str:
        skeleton = '{"type": "ping", "pad": ""}'
        return skeleton.replace('""', '"' + "x" * (size - len(skeleton)) + '"')

    # Fewer characters than the limit, more bytes: the limit is on bytes.
    multibyte = '{"type": "ping", "pad": "' + "é" * (limit // 2 + 8) + '"}'
    assert len(multibyte) < limit < len(multibyte.encode())

    try:
        await client._conn.send(ping_of(limit))
        assert await client.recv_json() == {"type": "pong"}  # exactly at the limit: accepted
        for text in (ping_of(limit + 1), multibyte, ping_of(1024 * 1024)):
            await client._conn.send(text)
            frame = await client.recv_json()
            assert (frame["type"], frame["code"]) == ("error", "frame_too_large"), frame
        await client._conn.send(b"\x00" * (limit + 1))  # binary: never a command
        assert (await client.recv_json())["type"] == "error"
        await client.send_json({"type": "ping"})
        assert await client.recv_json() == {"type": "pong"}
    finally:
        await client.close()


# --- passwords ----------------------------------------------------------------------------------------------

_SCRYPT = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/]+=*)\$([A-Za-z0-9+/]+=*)$")


async def test_passwords_are_stored_as_salted_scrypt(
    served: Served, session: AsyncSession, engine: AsyncEngine
):
    org = OrganizationFactory.build()
    session.add(org)
    await session.commit()
    password = f"Tr0ub4dor&3-{secrets.token_hex(2)}"
    service = AgentService(session=session)
    emails = [f"same-password-{secrets.token_hex(4)}@example.com" for _ in range(2)]
    for email in emails:
        await service.create_agent(org=org, email=email, name="Same", password=password, role=AgentRole.AGENT)
    await session.commit()
    async with async_sessionmaker(engine)() as s:
        stored = list((await s.scalars(select(Agent.password_hash).where(Agent.email.in_(emails)))).all())

    assert len(stored) == 2 and stored[0] != stored[1]  # same password, different hashes
    salts = []
    for value in stored:
        assert password not in value
        match = _SCRYPT.fullmatch(value)
        assert match, value
        n, r, p = (int(match.group(i)) for i in (1, 2, 3))
        salt, digest = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
        assert n >= 2**14 and n & (n - 1) == 0 and r >= 8 and p >= 1  # at least the interactive-login cost
        assert len(salt) >= 16 and len(digest) >= 32
        assert hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest)) == digest
        salts.append(salt)
    assert salts[0] != salts[1]

    for email in emails:
        assert await login(served.client, email, password)
        wrong = await served.client.post("/api/auth/login", json={"email": email, "password": password + " "})
        assert wrong.status_code == 401


def test_only_scrypt_hashes_verify() -> None:
    password = "correct horse battery staple"
    assert verify_password(password, hash_password(password))
    for stored in (
        password,  # a plaintext column
        hashlib.sha256(password.encode()).hexdigest(),
        "sha256$" + hashlib.sha256(password.encode()).hexdigest(),
        "",
        "scrypt$16384$8$1$$",
        "scrypt$1$1$1$AAAA$AAAA",
        "scrypt$x$8$1$AAAA$AAAA",
    ):
        assert not verify_password(password, stored), stored


def test_a_stored_hash_shorter_than_the_scheme_does_not_verify() -> None:
    """The verifier takes the digest length from the stored value, and scrypt's output for a shorter length is
    a prefix of the full one: a hash cut short (a narrowed column, a bad copy) keeps verifying, and one cut
    to a single byte would let one password in 256 through. A stored digest must be the scheme's 32 bytes."""
    password = "correct horse battery staple"
    scheme, n, r, p, salt, digest = hash_password(password).split("$")
    full = base64.b64decode(digest)
    for length in (30, 16, 4, 1):
        shortened = "$".join([scheme, n, r, p, salt, base64.b64encode(full[:length]).decode()])
        assert not verify_password(password, shortened), f"a {length}-byte digest verified"


# --- media paths ------------------------------------------------------------------------------------------

TRAVERSAL_KEYS = [
    "../secret",
    "../../etc/passwd",
    "originals/../../secret",
    "originals/./x",
    "originals//x",
    "/etc/passwd",
    "originals/%2e%2e/secret",
    "originals\\..\\secret",
    "Originals/x",
    "originals/x/",
    "originals/x..webp",
    "originals/x.webp/..",
    "",
    ".",
    "..",
    "originals/\x00x",
    "originals/x\n",
]


async def test_storage_refuses_keys_that_leave_its_directory(tmp_path: Path) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "secret"
    outside.write_bytes(b"not media")
    storage = MediaStorage.from_url(root.resolve().as_uri())
    for key in TRAVERSAL_KEYS:
        for operation in (
            storage.exists(key),
            storage.read(key),
            storage.stream(key),
            storage.size(key),
            storage.put_if_absent(key, b"overwritten"),
        ):
            with pytest.raises(ValueError, match="unsafe storage key"):
                await operation
    assert outside.read_bytes() == b"not media"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["secret", "store"]
    for sha in ("../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "a" * 63 + "/", " " + "a" * 63):
        for derive in (original_key, thumbnail_key):
            with pytest.raises(ValueError, match="SHA-256"):
                derive(sha)


async def raw_get(process: ApiProcess, target: str, token: str) -> tuple[int, bytes]:
    """A GET with the request target exactly as given (clients normalise `..`; attackers do not)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    try:
        writer.write(
            (
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_media_routes_take_only_uuids(processes: list[ApiProcess], world: Orgs, settings: Settings):
    a = world.a
    token = valid_token(settings, a.tenant)
    media = f"{API}/media"
    targets = [
        f"{media}/../../../../etc/passwd",
        f"{media}/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"{media}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"{media}/{a.ready_media_id}/../../../../../etc/passwd",
        f"{media}/{a.ready_media_id}%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"{media}/{a.ready_media_id}/thumbnail/../../../../../../etc/passwd",
        f"{media}/originals%2F{a.media_sha[:2]}%2F{a.media_sha[2:4]}%2F{a.media_sha}",
        f"{media}/{a.media_sha}",
        f"{media}/{a.media_sha}/thumbnail",
        f"{media}/not-a-uuid",
        f"{media}/{a.ready_media_id}x",
        f"{media}/{a.ready_media_id}/original",
    ]
    for target in targets:
        code, body = await raw_get(processes[0], target, token)
        assert code in (400, 404), (target, code, body[:200])
        assert b"root:" not in body and b"image bytes" not in body, target
    code, body = await raw_get(processes[0], f"{media}/{a.ready_media_id}", token)
    assert code == 200 and a.marker.encode() in body  # the real route, for comparison


async def test_a_hostile_file_name_cannot_shape_the_download_headers(
    served: Served, world: Orgs, engine: AsyncEngine
):
    a = world.a
    hostile = "../../etc/passwd\"; filename*=UTF-8''evil.html\r\nSet-Cookie: session=stolen\r\n\r\n<script>"
    async with async_sessionmaker(engine)() as s:
        await s.execute(
            update(Media)
            .where(Media.id == a.ready_media_id)
            .values(filename=hostile, content_type="application/pdf")
        )
        await s.commit()
    token = await login(served.client, a.tenant.agent.email)
    response = await served.client.get(f"{API}/media/{a.ready_media_id}", headers=bearer(token))
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    assert "set-cookie" not in response.headers
    assert "\r" not in disposition and "\n" not in disposition
    name = re.fullmatch(
        r'attachment; filename="([^"]*)"(; filename\*=UTF-8\'\'([A-Za-z0-9%._~-]+))?', disposition
    )
    assert name, disposition
    assert "/" not in name.group(1) and ".." not in name.group(1)
    assert response.headers["x-content-type-options"] == "nosniff"


# --- SSRF: where media downloads may go ------------------------------------------------------------------

TOKEN = "gateway-token-" + secrets.token_hex(4)


def target(gateway: str, base_url: str) -> FetchTarget:
    return FetchTarget(gateway, "loja-centro", base_url, TOKEN, REFS[gateway])


def internal_locations(port: int) -> list[str]:
    """Addresses a redirect or a media URL might point a worker at: this host and cloud metadata."""
    return [
        f"http://127.0.0.1:{port}/steal",
        f"https://127.0.0.1:{port}/steal",
        f"http://localhost:{port}/steal",
        f"https://localhost:{port}/steal",
        f"http://[::1]:{port}/steal",
        f"https://[::ffff:127.0.0.1]:{port}/steal",
        f"https://2130706433:{port}/steal",  # 127.0.0.1 as one number
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://169.254.169.254/computeMetadata/v1/",
        "https://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "https://2852039166/latest/meta-data/",  # 169.254.169.254 as one number
        "https://[fd00:ec2::254]/latest/meta-data/",  # EC2's IPv6 metadata address
        f"http://0.0.0.0:{port}/steal",
    ]


@pytest.mark.parametrize("gateway", ["wppconnect", "evolution", "cloudapi"])
async def test_a_gateway_redirect_to_an_internal_address_is_not_followed(gateway: str) -> None:
    async with (
        RawServer() as gateway_server,
        FakeGateway() as internal,
        httpx.AsyncClient(trust_env=False) as http,
    ):
        internal.respond(r".*", status(200, {"base64": "AAAA", "mimetype": "image/jpeg"}))
        for location in internal_locations(internal.port):
            gateway_server.on(PATHS[gateway], redirect(location))
            with pytest.raises(FetchFailed) as caught:
                await fetch_media(http, target(gateway, gateway_server.base_url), max_bytes=10_000, timeout=2)
            assert not caught.value.retryable, (location, caught.value.reason)
            assert TOKEN not in caught.value.reason
        assert internal.requests == []


async def test_a_cloudapi_media_url_on_an_internal_address_is_not_fetched() -> None:
    async with FakeGateway() as graph, FakeGateway() as internal, httpx.AsyncClient(trust_env=False) as http:
        internal.respond(r".*", Reply(200, b"secret", content_type="image/jpeg"))
        for location in internal_locations(internal.port):
            graph.respond(PATHS["cloudapi"], media_info(location))
            with pytest.raises(FetchFailed) as caught:
                await fetch_media(http, target("cloudapi", graph.base_url), max_bytes=10_000, timeout=2)
            assert not caught.value.retryable, (location, caught.value.reason)
        assert internal.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://127.1/",
        "https://0x7f000001/",
        "https://[::127.0.0.1]/",
        "https://[64:ff9b::a9fe:a9fe]/",  # NAT64 spelling of 169.254.169.254
        "https://[2002:a9fe:a9fe::]/",  # 6to4 spelling of it
        "https://[fe80::1%25eth0]/",
        "https://10.0.0.1/",
        "https://172.16.0.1/",
        "https://192.168.1.1/",
        "https://100.64.0.1/",
        "https://198.18.0.1/",
        "https://[fc00::1]/",
        "https://255.255.255.255/",
        "https://224.0.0.1/",
        "https://localhost/",
        "https://127.0.0.1.nip.io.invalid/",  # unresolvable: refused (for now), never contacted
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "ftp://127.0.0.1/",
    ],
)
async def test_destinations_outside_the_gateway_must_be_public_https(url: str) -> None:
    with pytest.raises(RefusedDestination):
        await check_destination(httpx.URL(url), trusted=frozenset())


# --- browsers: origins -----------------------------------------------------------------------------------

DISALLOWED_ORIGINS = [
    "https://evil.example",
    "null",
    "http://localhost:5173.evil.example",
    "http://evil.localhost:5173",
    "https://localhost:5173",
    "http://localhost:5174",
    "http://localhost",
]


async def test_websocket_from_a_disallowed_origin_is_refused(
    processes: list[ApiProcess], world: Orgs, settings: Settings, client: Client
):
    process = processes[0]
    token = await login(client, world.a.tenant.agent.email)
    assert "http://localhost:5173" in settings.app.cors_allowed_origins
    for origin in DISALLOWED_ORIGINS:
        assert origin not in settings.app.cors_allowed_origins
        assert await ws_outcome(process.ws_url, token, origin=origin) == ([], 4403), origin
    for origin in (*settings.app.cors_allowed_origins, None):  # the frontend, and non-browser clients
        frames, code = await ws_outcome(process.ws_url, token, origin=origin)
        assert ([f["type"] for f in frames], code) == (["ready"], 0), origin


async def test_rest_answers_no_cors_grant_to_a_disallowed_origin(served: Served, world: Orgs):
    client, fast = served.client, served.asgi
    a = world.a
    token = await login(client, a.tenant.agent.email)
    await prime_fast_path(fast, client, INBOX, token)
    for origin in DISALLOWED_ORIGINS:
        for path in (INBOX, f"{API}/conversations/{a.conversation_id}"):  # fast path, then Litestar
            response = await client.get(path, headers={**bearer(token), "Origin": origin, "Cookie": "a=b"})
            assert response.status_code == 200
            assert "access-control-allow-origin" not in response.headers, (origin, path)
        preflight = await client.options(
            f"{API}/conversations",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.headers.get("access-control-allow-origin") in (None, ""), origin
