"""A TCP relay that puts a database a few milliseconds away, as a managed Postgres (Supabase) is.

On loopback every query returns in well under a millisecond, so what a limit on concurrent reads does to
the readers waiting for it only shows once each read holds its slot for real round trips. The relay runs on
a thread of its own (its delays do not depend on the test's event loop) and delays every chunk Postgres
sends by `delay_s`, in order, without slowing throughput: each round trip costs `delay_s` more.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class DelayedRelay:
    def __init__(self, target_host: str, target_port: int, delay_s: float) -> None:
        self.target, self.delay_s = (target_host, target_port), delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._thread.start()
        self._run(self._listen())

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        async def delayed_pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def send() -> None:
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    while True:
                        due, data = await queue.get()
                        if not data:
                            break
                        await asyncio.sleep(max(0.0, due - self._loop.time()))
                        dst.write(data)
                        await dst.drain()
                dst.close()

            sender = asyncio.create_task(send())
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    queue.put_nowait((self._loop.time() + self.delay_s, data))
            queue.put_nowait((0.0, b""))
            await sender

        await asyncio.gather(pump(reader, upstream_writer), delayed_pump(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def delayed_database(database_url: str, delay_s: float) -> Iterator[str]:
    """The URL of `database_url` seen through a relay adding `delay_s` to every round trip."""
    parts = urlsplit(database_url)
    relay = DelayedRelay(parts.hostname or "127.0.0.1", parts.port or 5432, delay_s)
    relay.start()
    try:
        netloc = parts.netloc.rpartition("@")[0]
        yield urlunsplit(
            parts._replace(netloc=f"{netloc}@127.0.0.1:{relay.port}" if netloc else f"127.0.0.1:{relay.port}")
        )
    finally:
        relay.stop()
