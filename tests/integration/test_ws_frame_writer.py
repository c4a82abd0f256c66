"""The WebSocket protocol's frame writer (app.server.ws_protocol, issue 13), on real sockets: uvicorn's
protocol serving a bare ASGI app on 127.0.0.1, a real client on the other end.

A frame written with `write_text_now` goes out in the call itself, in order with the app's awaited sends;
after the close it is refused; on a client that stops reading it is refused once the transport pauses, so
the caller queues (and the slow-consumer limit applies, tests/integration/test_realtime_edges.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from uvicorn.server import ServerState
from websockets.asyncio.client import connect

from app.lib.frame_writer import FrameWriter, frame_writer_of
from app.server.run import WS_PROTOCOL
from app.server.ws_protocol import FramesWebSocketProtocol
from tests.kit.clients import StalledClient

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@asynccontextmanager
async def serving(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> AsyncIterator[int]:
    config = uvicorn.Config(app, ws=WS_PROTOCOL, ws_per_message_deflate=False, lifespan="off")
    config.load()
    assert config.ws_protocol_class is FramesWebSocketProtocol  # what app.server.run names
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FramesWebSocketProtocol(config, state, {}), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in state.tasks:
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)


async def test_frames_written_now_arrive_in_order_with_awaited_sends_and_not_after_the_close():
    results: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        writer = frame_writer_of(scope)
        assert writer is not None
        await receive()  # the client's "go"
        results.append(writer.write_text_now(b'{"n":1}'))
        await send({"type": "websocket.send", "text": '{"n":2}'})
        results.append(writer.write_text_now('{"n":3,"é":"ü"}'.encode()))
        await send({"type": "websocket.close", "code": 1000})
        results.append(writer.write_text_now(b'{"n":4}'))
        await receive()  # websocket.disconnect

    async with (
        serving(app) as port,
        connect(f"ws://127.0.0.1:{port}/", proxy=None, compression=None) as client,
    ):
        await client.send("go")
        frames = [json.loads(text) async for text in client]
        assert client.close_code == 1000
    assert frames == [{"n": 1}, {"n": 2}, {"n": 3, "é": "ü"}]
    assert results == [True, True, False]


async def test_a_client_that_stops_reading_pauses_the_transport_and_the_writer_refuses():
    outcome: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
    frame = json.dumps({"pad": "x" * 1000}).encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        writer: FrameWriter | None = frame_writer_of(scope)
        assert writer is not None
        await receive()  # the client's "go"
        written = 0
        while written < 100_000 and writer.write_text_now(frame):  # 100 MB would never fit: it pauses
            written += 1
        outcome.set_result((written, written < 100_000))
        await receive()

    async with serving(app) as port:
        stalled = await asyncio.to_thread(StalledClient, port, "/")
        stalled.send_text("go")
        written, refused = await asyncio.wait_for(outcome, 10)
        stalled.close()
    assert refused
    assert written > 0  # it took frames until the kernel's and the transport's buffers were full
    print(f"frames written before the transport paused: {written} of {len(frame)} bytes")
