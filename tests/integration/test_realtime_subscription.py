"""The hub's Redis subscription protocol (realtime/subscription.py, issue 13) against real Redis servers.

Messages reach the callback from the read callback itself, in publish order, a whole pipeline's worth per
read; confirmations come through the same callback; AUTH is sent when the URL has a password (a refused
one ends the subscription); a stopped server ends it with SubscriptionLost, which the hub reconnects on.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
from redis.asyncio import Redis

from app.domain.realtime.subscription import SubscriptionLost, subscribe
from tests.kit.processes import private_redis

Seen = list[tuple[bytes, bytes, bytes]]


async def _until(seen: Seen, count: int) -> None:
    async with asyncio.timeout(10):
        while len(seen) < count:
            await asyncio.sleep(0.01)


async def test_messages_arrive_in_publish_order_in_the_read_callback_with_confirmations_first(redis_url: str):
    prefix = f"sub-test-{secrets.token_hex(4)}"
    seen: Seen = []
    in_callback: list[bool] = []

    def on_message(kind: bytes, channel: bytes, data: bytes) -> None:
        in_callback.append(asyncio.current_task() is None)  # called by the transport, not from a task
        seen.append((kind, channel, data))

    subscription = await subscribe(redis_url, [f"{prefix}:org:*"], [f"{prefix}:inv"], on_message)
    client = Redis.from_url(redis_url)
    try:
        await _until(seen, 2)
        assert seen == [
            (b"psubscribe", f"{prefix}:org:*".encode(), b""),
            (b"subscribe", f"{prefix}:inv".encode(), b""),
        ]
        async with client.pipeline(transaction=False) as pipe:
            for n in range(200):
                pipe.publish(f"{prefix}:org:{n % 3}", f"event {n}".encode())
            pipe.publish(f"{prefix}:inv", b"scope-a\nscope-b")
            pipe.publish(f"{prefix}:elsewhere", b"not subscribed")
            await pipe.execute()
        await _until(seen, 203)
        await asyncio.sleep(0.1)
        events = seen[2:]
        assert [data for kind, _, data in events if kind == b"pmessage"] == [
            f"event {n}".encode() for n in range(200)
        ]
        assert events[0][1] == f"{prefix}:org:0".encode()
        assert events[-1] == (b"message", f"{prefix}:inv".encode(), b"scope-a\nscope-b")
        assert all(in_callback)
    finally:
        subscription.close()
        await client.aclose()


async def test_a_password_is_sent_a_wrong_one_ends_it_and_so_does_a_stopped_server():
    with private_redis() as server:
        admin = Redis.from_url(server.url)
        password = secrets.token_hex(8)
        await admin.config_set("requirepass", password)
        await admin.aclose()
        seen: Seen = []

        def on_message(kind: bytes, channel: bytes, data: bytes) -> None:
            seen.append((kind, channel, data))

        authed = server.url.replace("redis://", f"redis://:{password}@")
        subscription = await subscribe(authed, ["p:*"], [], on_message)
        await _until(seen, 1)
        publisher = Redis.from_url(authed)
        await publisher.publish("p:1", b"hello")
        await publisher.aclose()
        await _until(seen, 2)
        assert seen == [(b"psubscribe", b"p:*", b""), (b"pmessage", b"p:1", b"hello")]

        refused = await subscribe(server.url.replace("redis://", "redis://:wrong@"), ["p:*"], [], on_message)
        with pytest.raises(SubscriptionLost):
            await asyncio.wait_for(refused.closed, 10)

        server.stop()
        with pytest.raises(SubscriptionLost):
            await asyncio.wait_for(subscription.closed, 10)
        server.start()  # private_redis stops it on exit
