"""The seam between the ASGI server and the sockets' hot path (issue 13): how a socket writes a frame now.

A server that can write a WebSocket text message without awaiting puts an object with `write_text_now` in
the scope's extensions under `FRAME_WRITER` (app.server.ws_protocol does, for uvicorn); the realtime
connection uses it when nothing is queued before the frame. Here, on the ground floor, so neither side
imports the other.
"""

from __future__ import annotations

from typing import Protocol

FRAME_WRITER = "crm.frame_writer"


class FrameWriter(Protocol):
    def write_text_now(self, data: bytes) -> bool:
        """Write one UTF-8 text message now; False when it cannot go out without waiting."""


def frame_writer_of(scope: object) -> FrameWriter | None:
    extensions = scope.get("extensions") if isinstance(scope, dict) else None
    entry = extensions.get(FRAME_WRITER) if isinstance(extensions, dict) else None
    return entry.get("writer") if isinstance(entry, dict) else None
