"""One send() for a response's head and body instead of two (issue 13, item 5).

uvicorn's httptools cycle writes the head at `http.response.start` and the body at `http.response.body`:
two transport writes, and the socket buffer being empty, two send() system calls per response. A py-spy
profile of the API under the history bench put 19% of all samples in those two writes — system calls are
that dear on this host — more than the database statement of the read itself.

The cycle is given this wrapper of its connection's transport: a write is held until the next write joins
it (the body right after its head, in the same task step) or, if none comes in this loop iteration (a
streamed response, a `100 Continue`), it is written alone at the end of the iteration. Closing writes
what is held first. Order is kept: everything the cycle writes goes through here, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescedWrites:
    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        if len(self._held) > 1:
            self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


__all__ = ["CoalescedWrites"]
