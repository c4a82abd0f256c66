"""uvicorn's websockets sans-I/O protocol, plus a way to write a frame now, without awaiting (issue 13).

Under webhook load the API process's event loop is busy with requests, and every hop a frame makes through
the loop's ready queue waits behind all of them: the hub used to start a task per socket per frame, whose
first step (one more loop turn later) went through Litestar's and uvicorn's `send` coroutines to reach the
transport. That hop is most of what separated a frame from the minimal relay, which writes to the
transport from the Redis callback itself.

`write_text_now` is the body of uvicorn's own `websocket.send` branch, without its `await writable.wait()`:
it writes when the transport takes data (not paused, handshake done, no close sent) and says False
otherwise, and the caller then queues the frame behind the slow path as before (a paused transport is how
a slow consumer shows). The websockets `ServerProtocol` keeps its state: the frame goes through its
`send_text`, so framing, state checks and close handling are its own.

The protocol puts itself in the scope's extensions under `FRAME_WRITER` (app.lib.frame_writer); an ASGI
server without it (the test client) gives the application no writer, and every frame takes the awaited
`send`.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

from app.lib.frame_writer import FRAME_WRITER


class FramesWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][FRAME_WRITER] = {"writer": self}

    def write_text_now(self, data: bytes) -> bool:
        """Write one UTF-8 text message if it can go out without waiting; False: send it the awaited way."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        try:
            self.conn.send_text(data)
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True
