"""Script calls made in the same turn of the event loop go to Redis in one pipeline (issue 13).

Every webhook takes and gives back a slot of its (address, instance) budget (app.lib.throttle): two Lua
script calls, each its own round trip — a socket write and read, redis-py's packing and parsing — which
profiled as the largest single cost of a webhook on the lean path. The calls of requests arriving together
are independent scripts, so sending them in one pipeline (no MULTI) changes nothing Redis decides: each
still runs atomically, in the order the calls were made; only the round trips are shared.

A script Redis does not know yet (first use, or Redis restarted and lost its cache) answers NOSCRIPT in
the pipeline; that call alone is sent again the ordinary way, which loads the script. A pipeline that fails
as a whole fails each of its calls with the same error, so callers (app.lib.throttle_calls) judge it as
they would their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class CoalescedScripts:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self.pipelines = 0  # since start, for tests and stats
        self.calls = 0

    def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """The script's answer, sent with the calls made before the loop's next turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((script, keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        self.pipelines += 1
        self.calls += len(batch)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in batch:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                answers = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        unknown: list[_Call] = []
        for call, answer in zip(batch, answers, strict=True):
            future = call[3]
            if isinstance(answer, NoScriptError):
                unknown.append(call)
            elif future.done():
                continue  # its caller gave up waiting
            elif isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        for script, keys, args, future in unknown:
            try:
                answer = await script(keys=keys, args=args)  # loads the script, then runs it
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(answer)
