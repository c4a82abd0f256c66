"""Access tokens: only an unexpired HS256 token signed with the server's secret, with every claim the API
needs, for an agent who may still log in, opens a route or a socket.

Each refusal is checked on REST through Litestar, on the fast path (the caller's page is in memory and the
caller's valid token has been verified before, so only the token stands between the request and the
bytes), and on /ws (close 4401).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

import pytest
from sqlalchemy import case
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from websockets.exceptions import ConnectionClosed

from app.config import Settings
from app.db.models import Agent
from tests.kit.clients import WsClient
from tests.kit.factories import PASSWORD
from tests.kit.processes import ApiProcess
from tests.security.support import (
    API,
    INBOX,
    Client,
    Org,
    Orgs,
    RsaKey,
    Served,
    b64url,
    b64url_json,
    bearer,
    claims_for,
    history,
    hmac_jwt,
    login,
    org_rows,
    post_evolution_text,
    prime_fast_path,
    rs256_jwt,
    unsigned,
    valid_token,
    ws_outcome,
)

CLOSE_UNAUTHORIZED = 4401


@cache
def attacker_key() -> RsaKey:
    return RsaKey.generate()


def _decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _claims(token: str) -> dict[str, Any]:
    return dict(json.loads(_decode(token.split(".")[1])))


def _tampered(token: str, **changes: Any) -> str:
    """A genuine token whose payload is rewritten while its header and signature are kept."""
    header, _, signature = token.split(".")
    return f"{header}.{b64url_json({**_claims(token), **changes})}.{signature}"


Forger = Callable[[Settings, Orgs], str]


def _secret(settings: Settings) -> bytes:
    return settings.auth.jwt_secret.encode()


# Every token an attacker (or a stale client) might present, by what is wrong with it.
BAD_TOKENS: dict[str, Forger] = {
    "expired": lambda s, w: valid_token(s, w.a.tenant, lifetime_s=-30, iat=int(time.time()) - 3600),
    "alg none": lambda s, w: unsigned({"alg": "none", "typ": "JWT"}, claims_for(w.a.tenant)) + ".",
    "alg None": lambda s, w: unsigned({"alg": "None", "typ": "JWT"}, claims_for(w.a.tenant)) + ".",
    "alg none, signature kept": lambda s, w: (
        unsigned({"alg": "none", "typ": "JWT"}, claims_for(w.a.tenant))
        + "."
        + valid_token(s, w.a.tenant).split(".")[2]
    ),
    "RS256 with an attacker's key": lambda s, w: rs256_jwt(claims_for(w.a.tenant), attacker_key()),
    "HS256 keyed with an RSA public key": lambda s, w: hmac_jwt(
        claims_for(w.a.tenant), attacker_key().public_pem()
    ),
    "HS512 with the real secret": lambda s, w: hmac_jwt(claims_for(w.a.tenant), _secret(s), "HS512"),
    "HS384 with the real secret": lambda s, w: hmac_jwt(claims_for(w.a.tenant), _secret(s), "HS384"),
    "wrong secret": lambda s, w: hmac_jwt(claims_for(w.a.tenant), b"not-the-server-secret-but-long-enough"),
    "empty secret": lambda s, w: hmac_jwt(claims_for(w.a.tenant), b""),
    "no exp": lambda s, w: valid_token(s, w.a.tenant, exp=None),
    "no sub": lambda s, w: valid_token(s, w.a.tenant, sub=None),
    "no org_id": lambda s, w: valid_token(s, w.a.tenant, org_id=None),
    "no role": lambda s, w: valid_token(s, w.a.tenant, role=None),
    "unknown role": lambda s, w: valid_token(s, w.a.tenant, role="owner"),
    "sub not a uuid": lambda s, w: valid_token(s, w.a.tenant, sub="1 OR 1=1"),
    "org_id not a uuid": lambda s, w: valid_token(s, w.a.tenant, org_id="*"),
    "exp not a number": lambda s, w: valid_token(s, w.a.tenant, exp="tomorrow"),
    "not valid yet (nbf)": lambda s, w: valid_token(s, w.a.tenant, nbf=int(time.time()) + 3600),
    "gen not a number": lambda s, w: valid_token(s, w.a.tenant, gen="0"),
    "gen a float": lambda s, w: valid_token(s, w.a.tenant, gen=0.5),
    "payload moved to the other org": lambda s, w: _tampered(
        valid_token(s, w.a.tenant), org_id=str(w.b.org_id)
    ),
    "payload promoted to admin": lambda s, w: _tampered(valid_token(s, w.a.tenant), role="admin"),
    "payload with a later exp": lambda s, w: _tampered(
        valid_token(s, w.a.tenant, lifetime_s=-30), exp=int(time.time()) + 3600
    ),
    "header switched to HS512": lambda s, w: (
        b64url_json({"alg": "HS512", "typ": "JWT"}) + "." + valid_token(s, w.a.tenant).split(".", 1)[1]
    ),
    "signature removed": lambda s, w: valid_token(s, w.a.tenant).rsplit(".", 1)[0] + ".",
    "signature truncated": lambda s, w: valid_token(s, w.a.tenant)[:-8],
    "signature of another token": lambda s, w: (
        valid_token(s, w.a.tenant).rsplit(".", 1)[0] + "." + valid_token(s, w.b.tenant).rsplit(".", 1)[1]
    ),
    "two tokens glued": lambda s, w: valid_token(s, w.a.tenant) + "." + b64url(b"x"),
    "not a JWT": lambda s, w: "not-a-jwt",
    "empty": lambda s, w: "",
}


def assert_unauthorized(response: Any, what: str) -> None:
    assert response.status_code == 401, (what, response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("application/problem+json"), what


async def test_forged_and_broken_tokens_are_refused_on_rest_and_the_fast_path(
    served: Served, world: Orgs, settings: Settings, engine: AsyncEngine
):
    client, fast = served.client, served.asgi
    a = world.a
    genuine = await login(client, a.tenant.agent.email)
    await prime_fast_path(fast, client, history(a.conversation_id), genuine)
    await prime_fast_path(fast, client, INBOX, genuine)
    before = await org_rows(engine, a.org_id), await org_rows(engine, world.b.org_id)
    served_before = fast.served

    requests = [
        ("GET", history(a.conversation_id)),  # in the fast path's memory
        ("GET", INBOX),  # in the fast path's memory
        ("GET", f"{history(a.conversation_id)}?before_seq=3"),
        ("GET", f"{API}/conversations/{a.conversation_id}"),
        ("POST", f"{API}/conversations/{a.conversation_id}/read"),
        ("POST", history(a.conversation_id)),
        ("GET", f"{API}/media/{a.ready_media_id}"),
        ("GET", f"{API}/websocket/info"),
        ("GET", f"{API}/stats"),
    ]
    for name, forge in BAD_TOKENS.items():
        token = forge(settings, world)
        for method, path in requests:
            headers = bearer(token)
            if method == "GET":
                response = await client.get(path, headers=headers)
            else:
                response = await client.post(
                    path, headers=headers, json={"text": "x", "client_message_id": "t-1"}
                )
            assert_unauthorized(response, f"{name}: {method} {path}")
    assert fast.served == served_before, "the fast path answered a bad token"
    assert (await org_rows(engine, a.org_id), await org_rows(engine, world.b.org_id)) == before

    # The genuine token still works, from the fast path: the bad ones neither replaced nor evicted it.
    assert (await client.get(history(a.conversation_id), headers=bearer(genuine))).status_code == 200
    assert fast.served == served_before + 1


async def test_forged_and_broken_tokens_are_refused_on_the_websocket(
    processes: list[ApiProcess], world: Orgs, settings: Settings
):
    process = processes[0]
    outcomes = {}
    for name, forge in BAD_TOKENS.items():
        frames, code = await ws_outcome(process.ws_url, forge(settings, world))
        outcomes[name] = ([f.get("type") for f in frames], code)
    assert {name: outcome for name, outcome in outcomes.items() if outcome != ([], CLOSE_UNAUTHORIZED)} == {}
    # ... while the same socket with a genuine token is accepted.
    client = await WsClient.connect(process.ws_url, valid_token(settings, world.a.tenant))
    assert (await client.recv_json())["type"] == "ready"
    await client.close()


async def test_a_token_that_expires_after_use_is_refused_everywhere_it_was_remembered(
    served: Served, world: Orgs, settings: Settings, processes: list[ApiProcess]
):
    """Valid, then cached by the fast path (page in memory, token verified), then expired."""
    client, fast = served.client, served.asgi
    a = world.a
    token = valid_token(settings, a.tenant, lifetime_s=4)
    expires_at = float(_claims(token)["exp"])
    await prime_fast_path(fast, client, history(a.conversation_id), token)
    assert (
        await client.get(f"{API}/conversations/{a.conversation_id}", headers=bearer(token))
    ).status_code == 200
    socket = await WsClient.connect(processes[0].ws_url, token)
    assert (await socket.recv_json())["type"] == "ready"

    while time.time() < expires_at + 0.5:
        await asyncio.sleep(0.1)
    served_before = fast.served
    assert_unauthorized(await client.get(history(a.conversation_id), headers=bearer(token)), "fast path")
    assert_unauthorized(
        await client.get(f"{API}/conversations/{a.conversation_id}", headers=bearer(token)), "Litestar"
    )
    assert fast.served == served_before
    assert await socket.expect_close() == CLOSE_UNAUTHORIZED  # the open socket, when its token expired
    assert await ws_outcome(processes[0].ws_url, token) == ([], CLOSE_UNAUTHORIZED)  # and a new one


# --- agents who may no longer log in ------------------------------------------------------------------------


async def _revoke(engine: AsyncEngine, agent_id: uuid.UUID, how: str) -> None:
    """Change the agent the way an operator would, straight in the database (the triggers do the rest)."""
    agent = Agent.__table__
    changes = {
        "deactivated": agent.update().values(is_active=False),
        "deleted": agent.delete(),
        "given another role": agent.update().values(
            role=case((agent.c.role == "admin", "agent"), else_="admin")
        ),
        "given a new password": agent.update().values(password_hash="scrypt$changed"),
        "signed out everywhere": agent.update().values(token_generation=agent.c.token_generation + 1),
    }
    async with async_sessionmaker(engine)() as session:
        await session.execute(changes[how].where(agent.c.id == agent_id))
        await session.commit()


# Agents who may no longer log in, and every change that makes a token's claims untrue.
REVOCATIONS = ["deactivated", "deleted"]
TOKEN_REVOCATIONS = [*REVOCATIONS, "given another role", "given a new password", "signed out everywhere"]


@pytest.mark.parametrize("how", REVOCATIONS)
async def test_a_revoked_agent_cannot_log_in(served: Served, world: Orgs, engine: AsyncEngine, how: str):
    await _revoke(engine, world.a.tenant.agent.id, how)
    response = await served.client.post(
        "/api/auth/login", json={"email": world.a.tenant.agent.email, "password": PASSWORD}
    )
    assert_unauthorized(response, "login")
    assert "access_token" not in response.text


# A revocation reaches a process that already trusts the token by Postgres NOTIFY: allow it a moment.
PROPAGATION_S = 2.0


async def _refused_soon(request: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = time.monotonic() + PROPAGATION_S
    while True:
        response = await request()
        if response.status_code != 200 or time.monotonic() > deadline:
            assert_unauthorized(response, what)
            return response
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("how", TOKEN_REVOCATIONS)
async def test_a_revoked_agents_token_is_refused_on_first_use(
    served: Served, world: Orgs, settings: Settings, engine: AsyncEngine, how: str
):
    """Issued before the change, presented for the first time after it: Postgres is asked, no waiting."""
    token = valid_token(settings, world.a.tenant)
    await _revoke(engine, world.a.tenant.agent.id, how)
    response = await served.client.get(
        f"{API}/conversations/{world.a.conversation_id}", headers=bearer(token)
    )
    assert_unauthorized(response, f"token of an agent {how}, first use")


@pytest.mark.parametrize("how", TOKEN_REVOCATIONS)
async def test_a_revoked_agents_remembered_token_is_refused(
    served: Served, world: Orgs, engine: AsyncEngine, how: str
):
    """Verified (and remembered by VerifiedTokens) before the change."""
    token = await login(served.client, world.a.tenant.agent.email)
    path = f"{API}/conversations/{world.a.conversation_id}"
    assert (await served.client.get(path, headers=bearer(token))).status_code == 200
    await _revoke(engine, world.a.tenant.agent.id, how)
    await _refused_soon(lambda: served.client.get(path, headers=bearer(token)), f"remembered, {how}")
    # ... and stays refused, for writes too.
    assert_unauthorized(await served.client.post(f"{path}/read", headers=bearer(token)), f"write, {how}")


@pytest.mark.parametrize("how", TOKEN_REVOCATIONS)
async def test_a_revoked_agents_token_is_refused_by_the_fast_path(
    served: Served, world: Orgs, engine: AsyncEngine, how: str
):
    client, fast = served.client, served.asgi
    token = await login(client, world.a.tenant.agent.email)
    await prime_fast_path(fast, client, history(world.a.conversation_id), token)
    await _revoke(engine, world.a.tenant.agent.id, how)
    served_before = fast.served
    await _refused_soon(
        lambda: client.get(history(world.a.conversation_id), headers=bearer(token)), f"fast path, {how}"
    )
    # What the fast path answered while the revocation travelled (at most PROPAGATION_S), then nothing.
    served_after = fast.served
    assert_unauthorized(await client.get(history(world.a.conversation_id), headers=bearer(token)), how)
    assert fast.served == served_after
    print(f"fast path answered {served_after - served_before} request(s) after the agent was {how}")


async def test_a_new_login_after_the_change_works_and_the_old_token_stays_refused(
    served: Served, world: Orgs, engine: AsyncEngine
):
    client = served.client
    path = f"{API}/conversations/{world.a.conversation_id}"
    old = await login(client, world.a.tenant.agent.email)
    assert (await client.get(path, headers=bearer(old))).status_code == 200
    await _revoke(engine, world.a.tenant.agent.id, "signed out everywhere")
    await _refused_soon(lambda: client.get(path, headers=bearer(old)), "old token")
    new = await login(client, world.a.tenant.agent.email)
    assert (await client.get(path, headers=bearer(new))).status_code == 200
    assert_unauthorized(await client.get(path, headers=bearer(old)), "old token after a new login")


async def test_reactivating_an_agent_does_not_bring_old_tokens_back(
    served: Served, world: Orgs, engine: AsyncEngine, settings: Settings
):
    agent_id = world.a.tenant.agent.id
    old = await login(served.client, world.a.tenant.agent.email)
    await _revoke(engine, agent_id, "deactivated")
    async with async_sessionmaker(engine)() as session:
        await session.execute(Agent.__table__.update().values(is_active=True).where(Agent.id == agent_id))
        await session.commit()
    path = f"{API}/conversations/{world.a.conversation_id}"
    await _refused_soon(lambda: served.client.get(path, headers=bearer(old)), "token from before")
    fresh = await login(served.client, world.a.tenant.agent.email)
    assert (await served.client.get(path, headers=bearer(fresh))).status_code == 200


@pytest.mark.parametrize("how", REVOCATIONS)
async def test_a_revoked_agent_cannot_open_a_socket(
    processes: list[ApiProcess], world: Orgs, engine: AsyncEngine, settings: Settings, how: str
):
    process = processes[0]
    token = valid_token(settings, world.a.tenant)
    assert (await ws_outcome(process.ws_url, token))[1] != CLOSE_UNAUTHORIZED  # remembered by the process
    await _revoke(engine, world.a.tenant.agent.id, how)
    deadline = time.monotonic() + PROPAGATION_S
    while (outcome := await ws_outcome(process.ws_url, token)) != ([], CLOSE_UNAUTHORIZED):
        assert time.monotonic() < deadline, f"a {how} agent still opens sockets: {outcome}"
        await asyncio.sleep(0.02)
    # A process that never saw the token asks Postgres: refused at once.
    assert await ws_outcome(processes[1].ws_url, token) == ([], CLOSE_UNAUTHORIZED)


@pytest.mark.parametrize("how", TOKEN_REVOCATIONS)
async def test_a_revoked_agents_open_socket_is_closed_and_gets_no_more_messages(
    processes: list[ApiProcess], world: Orgs, engine: AsyncEngine, client: Client, how: str
):
    """The socket was opened before the change; the next message of the org must not reach it."""
    first, second = processes
    a: Org = world.a
    token = await login(client, a.tenant.agent.email)
    socket = await WsClient.connect(first.ws_url, token)
    assert (await socket.recv_json())["type"] == "ready"
    await socket.send_json({"type": "subscribe", "conversation_id": str(a.conversation_id)})
    assert (await socket.recv_json())["type"] == "replay.done"

    await _revoke(engine, a.tenant.agent.id, how)
    text = f"{a.marker} after the agent was {how}"
    await post_evolution_text(second, a, f"R{uuid.uuid4().hex[:12].upper()}", text)
    received = await _frames_until_closed_or(socket, text)
    assert not any(text in str(frame) for frame in received), f"an agent {how} got {received}"
    assert socket.close_code == CLOSE_UNAUTHORIZED


async def _frames_until_closed_or(socket: WsClient, text: str) -> list[Any]:
    """Frames until the server closes the socket or a frame carrying `text` arrives (5 s at most)."""
    frames: list[Any] = []
    try:
        async with asyncio.timeout(5):
            while True:
                frames.append(await socket.recv_json())
                if text in str(frames[-1]):
                    await socket.close()
                    return frames
    except (ConnectionClosed, TimeoutError):
        return frames
