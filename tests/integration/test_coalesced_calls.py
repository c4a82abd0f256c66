"""The throttles' Redis calls of one loop turn share one pipeline, and fail open together (issue 13,
app.lib.redis_scripts)."""

from __future__ import annotations

import asyncio
import secrets

from redis.asyncio import Redis

from app.lib.redis_scripts import CoalescedCalls
from app.lib.throttle_calls import ThrottleCalls

_INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_reads_and_scripts_of_one_turn_go_in_one_pipeline(redis: Redis, redis_url: str) -> None:
    calls = ThrottleCalls(redis_url)
    coalesced = CoalescedCalls(redis, calls, "test")
    key = f"coalesced-test:{secrets.token_hex(4)}"
    script = redis.register_script(_INCR)
    try:
        await redis.set(f"{key}:a", 7)
        # The script is new to this Redis: NOSCRIPT in the pipeline, then sent alone, which loads it.
        answers = await asyncio.gather(
            coalesced.read_count(f"{key}:a"),
            coalesced.read_count(f"{key}:missing"),
            coalesced.script(script, [f"{key}:b"], [3]),
            coalesced.read_count(f"{key}:a"),
        )
        assert answers == [7, 0, 3, 7]
        assert coalesced.pipelines == 1 and coalesced.calls == 4
        assert await asyncio.gather(coalesced.script(script, [f"{key}:b"], [2])) == [5]
        assert coalesced.pipelines == 2
    finally:
        await redis.delete(f"{key}:a", f"{key}:b")
        calls.close()


async def test_every_call_of_a_pipeline_answers_none_when_redis_is_down(unused_tcp_port: int) -> None:
    url = f"redis://127.0.0.1:{unused_tcp_port}/0"
    dead = Redis.from_url(url, socket_connect_timeout=0.2)
    calls = ThrottleCalls(url)
    coalesced = CoalescedCalls(dead, calls, "test")
    try:
        script = dead.register_script(_INCR)
        first = await asyncio.gather(coalesced.read_count("k"), coalesced.script(script, ["k"], [1]))
        assert first == [None, None]
        assert calls.resting  # a refused connection rests the throttles at once
        assert await coalesced.read_count("k") is None  # resting: answered without a round trip
        assert coalesced.pipelines == 1
    finally:
        await dead.aclose()
        calls.close()
