"""A TCP relay on a thread of its own, in front of a real Postgres or Redis on loopback.

- `delay_s`: every chunk the server sends is delayed by that much, in order, without slowing throughput:
  each round trip costs `delay_s` more, as with a managed Postgres (Supabase) a few milliseconds away. On
  loopback a query returns in well under a millisecond, so what a limit on concurrent reads does to the
  readers waiting for it only shows once each read holds its slot for real round trips.
- `cut()` drops every connection and refuses new ones (a network partition: the server keeps running, and
  keeps its data); `restore()` heals on the same port.

Its delays and cuts do not depend on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class TcpRelay:
    def __init__(self, target_host: str, target_port: int, delay_s: float = 0.0) -> None:
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
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}
        answers = self._delayed_pump if self.delay_s > 0 else self._pump
        await asyncio.gather(self._pump(reader, upstream_writer), answers(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def _delayed_pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
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

    async def _cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    def cut(self) -> None:
        self._run(self._cut())

    def restore(self) -> None:
        self._run(self._listen())  # the same port again

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def relayed(url: str, default_port: int, delay_s: float = 0.0) -> Iterator[tuple[TcpRelay, str]]:
    """A relay to the server of `url`, and `url` pointed at the relay (credentials and path kept)."""
    parts = urlsplit(url)
    relay = TcpRelay(parts.hostname or "127.0.0.1", parts.port or default_port, delay_s)
    relay.start()
    try:
        credentials = parts.netloc.rpartition("@")[0]
        address = f"127.0.0.1:{relay.port}"
        yield relay, urlunsplit(parts._replace(netloc=f"{credentials}@{address}" if credentials else address))
    finally:
        relay.stop()


@contextlib.contextmanager
def delayed_database(database_url: str, delay_s: float) -> Iterator[str]:
    """The URL of `database_url` seen through a relay adding `delay_s` to every round trip."""
    with relayed(database_url, 5432, delay_s) as (_, url):
        yield url


@contextlib.contextmanager
def relay_to(redis_url: str) -> Iterator[tuple[TcpRelay, str]]:
    """A cuttable relay in front of Redis, and its URL."""
    with relayed(redis_url, 6379) as pair:
        yield pair
