"""The throttles' Redis calls made in the same turn of the event loop go to Redis in one pipeline, timed
once (issue 13).

Every webhook used to take and give back a slot of its (address, instance) budget: two Lua script calls,
each its own round trip, and each wrapped in its own timing (app.lib.throttle_calls: a task, a shield, a
wait_for) — which profiled as the largest single cost of a webhook on the lean path. Now:

- the calls of requests arriving together share one pipeline (no MULTI): independent scripts and reads, so
  Redis decides exactly what it would have decided for each alone, in the order the calls were made;
- every counter read of that turn is one MGET (a verified webhook's only Redis call is a read of its pair's
  failures: app.lib.throttle `failures`);
- the pipeline, not each call, is timed by ThrottleCalls: when Redis cannot answer, every call of the
  pipeline answers None and its caller fails open.

A script Redis does not know yet (first use, or Redis restarted and lost its cache) answers NOSCRIPT in the
pipeline; that call alone is sent again the ordinary way, which loads the script. A script Redis refuses
(an error answer) answers None to its caller, logged: nothing to rest from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from app.lib.throttle_calls import ThrottleCalls

log = structlog.get_logger()

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]
_Read = tuple[str, "asyncio.Future[int | None]"]


class CoalescedCalls:
    def __init__(self, redis: Redis, calls: ThrottleCalls, name: str) -> None:
        self._redis = redis
        self._calls = calls
        self._name = name  # which throttle, in the logs of ThrottleCalls
        self._scripts: list[_Call] = []
        self._reads: list[_Read] = []
        self._sending: set[asyncio.Task[None]] = set()
        self.pipelines = 0  # since start, for tests and stats
        self.calls = 0

    def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """The script's answer (None: Redis could not give it), sent with the calls of this loop turn."""
        future: asyncio.Future[Any] = self._schedule()
        self._scripts.append((script, keys, args, future))
        return future

    def read_count(self, key: str) -> asyncio.Future[int | None]:
        """The integer at `key` (0 when absent; None: Redis could not answer), read with one MGET for every
        read of this loop turn."""
        future: asyncio.Future[int | None] = self._schedule()
        self._reads.append((key, future))
        return future

    def _schedule(self) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._scripts and not self._reads:
            loop.call_soon(self._flush)
        return loop.create_future()

    def _flush(self) -> None:
        scripts, self._scripts = self._scripts, []
        reads, self._reads = self._reads, []
        if self._calls.resting:  # Redis known down: fail open without a task
            _fail_open(scripts, reads)
            return
        task = asyncio.ensure_future(self._send(scripts, reads))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, scripts: list[_Call], reads: list[_Read]) -> None:
        self.pipelines += 1
        self.calls += len(scripts) + len(reads)
        answers = None
        try:
            answers = await self._calls.run(lambda: self._execute(scripts, reads), self._name)
        finally:
            if answers is None:  # Redis could not answer (or this task was cancelled): fail open
                _fail_open(scripts, reads)
        if answers is None:
            return
        if reads:
            values, answers = answers[0], answers[1:]
            if isinstance(values, Exception):  # the MGET refused: its reads fail open
                _fail_open([], reads)
            else:
                for (_, future), value in zip(reads, values, strict=True):
                    _answer(future, int(value or 0))
        unknown: list[_Call] = []
        for call, answer in zip(scripts, answers, strict=True):
            if isinstance(answer, NoScriptError):
                unknown.append(call)
            elif isinstance(answer, Exception):
                log.warning("throttle call failed", throttle=self._name, error=type(answer).__name__)
                _answer(call[3], None)
            else:
                _answer(call[3], answer)
        for script, keys, args, future in unknown:  # loads the script, then runs it
            _answer(future, await self._calls.run(partial(script, keys=keys, args=args), self._name))

    async def _execute(self, scripts: list[_Call], reads: list[_Read]) -> Any:
        async with self._redis.pipeline(transaction=False) as pipe:
            if reads:
                pipe.mget([key for key, _ in reads])
            for script, keys, args, _ in scripts:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)


def _fail_open(scripts: list[_Call], reads: list[_Read]) -> None:
    for *_, future in scripts:
        _answer(future, None)
    for _, future in reads:
        _answer(future, None)


def _answer(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # its caller may have given up waiting
        future.set_result(value)
