"""NOT COLLECTED — tests for a defect still open (issue 7): a deactivated or deleted agent's token stays
valid until it expires. They belong in tests/security/test_tokens.py (they use its fixtures and helpers:
`served`, `world`, `_revoke`, `REVOCATIONS`, `assert_unauthorized`) and fail today on every path: first use,
a token Litestar remembers (VerifiedTokens), the fast path, a new /ws connection, an open socket.

Proposed fix (from the security review): a per-agent revocation stamp (`agents.tokens_valid_after`, mirrored
in Redis as `{prefix}:auth:revoked:{agent_id}`), set by whatever deactivates, deletes or demotes an agent;
tokens with `iat` before it are refused (Litestar's `revoked_token_handler`, and /ws `_authenticate`); the
revocation is published on the Hub's invalidation channel so every process drops that agent's VerifiedTokens
entries and closes its sockets with 4401; VerifiedTokens is only trusted while that subscription is live.
Move these back into tests/security/test_tokens.py with the fix.
"""

@pytest.mark.parametrize("how", REVOCATIONS)
async def test_a_revoked_agents_token_is_refused_on_first_use(
    served: Served, world: World, engine: AsyncEngine, how: str
):
    """Issued before the agent was deactivated/deleted, presented for the first time after."""
    token = await login(served.client, world.a.tenant.agent.email)
    await _revoke(engine, world.a.tenant.agent.id, how)
    response = await served.client.get(
        f"{API}/conversations/{world.a.conversation_id}", headers=bearer(token)
    )
    assert_unauthorized(response, f"token of a {how} agent, first use")


@pytest.mark.parametrize("how", REVOCATIONS)
async def test_a_revoked_agents_remembered_token_is_refused(
    served: Served, world: World, engine: AsyncEngine, how: str
):
    """Verified (and remembered by VerifiedTokens) before the agent was deactivated/deleted."""
    token = await login(served.client, world.a.tenant.agent.email)
    path = f"{API}/conversations/{world.a.conversation_id}"
    assert (await served.client.get(path, headers=bearer(token))).status_code == 200
    await _revoke(engine, world.a.tenant.agent.id, how)
    response = await served.client.post(f"{path}/read", headers=bearer(token))
    assert_unauthorized(response, f"remembered token of a {how} agent")


@pytest.mark.parametrize("how", REVOCATIONS)
async def test_a_revoked_agents_token_is_refused_by_the_fast_path(
    served: Served, world: World, engine: AsyncEngine, how: str
):
    client, fast = served.client, served.asgi
    token = await login(client, world.a.tenant.agent.email)
    await prime_fast_path(fast, client, history(world.a.conversation_id), token)
    await _revoke(engine, world.a.tenant.agent.id, how)
    served_before = fast.served
    response = await client.get(history(world.a.conversation_id), headers=bearer(token))
    assert_unauthorized(response, f"fast path, token of a {how} agent")
    assert fast.served == served_before


@pytest.mark.parametrize("how", REVOCATIONS)
async def test_a_revoked_agent_cannot_open_a_socket(
    processes: list[ApiProcess], world: World, engine: AsyncEngine, client: Client, how: str
):
    process = processes[0]
    token = await login(client, world.a.tenant.agent.email)
    await _revoke(engine, world.a.tenant.agent.id, how)
    frames, code = await ws_outcome(process.ws_url, token)
    assert ([f["type"] for f in frames], code) == ([], CLOSE_UNAUTHORIZED)


@pytest.mark.parametrize("how", REVOCATIONS)
async def test_a_revoked_agents_open_socket_gets_no_more_messages(
    processes: list[ApiProcess], world: World, engine: AsyncEngine, client: Client, how: str
):
    """The socket was opened while the agent could log in; the next message of the org must not reach it."""
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
    assert not any(text in str(frame) for frame in received), f"a {how} agent's open socket got {received}"
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
