"""The Python floor under the webhook goal (issue 13): uvicorn answering a webhook POST with no work at all.

`python -m tests.bench.webhook_floor PORT MODE [DSN]` serves, on uvicorn's httptools protocol with the access
log off (as the API runs), an ASGI app that reads the whole body and then:

- `bare`: answers 200 with a fixed JSON body;
- `decode`: decodes the body with msgspec and encodes a reply;
- `ingest`: does the durable job and nothing else — no framework, no authentication, no throttle, no
  metrics: the webhooks that queue while a batch is in flight (4 flights, as the API) go to Postgres as one
  call of a plpgsql function doing, per message, the Node peer's own statements (contact upsert, conversation
  upsert taking seq, message insert ON CONFLICT DO NOTHING) in the peer's schema, created at start in the
  empty database DSN; one COMMIT; then one Redis pipeline per batch (PUBLISH + DEL per message), then the
  answers.

Whatever a real webhook handler does costs more than `bare`, and `ingest` is the cheapest Python server that
keeps the peer's guarantees on this stack (uvicorn, asyncpg, redis-py), so their req/s under the peer's load
generator, measured beside the peer and the API in one run, show where the floor of issue 13's 2x goal is.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

import asyncpg
import msgspec
import redis.asyncio as aioredis
import uvicorn

_OK = b'{"ok":true,"duplicate":false}'
_HEAD = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_OK)).encode())],
}
_BODY = {"type": "http.response.body", "body": _OK}
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


async def _read_body(receive) -> bytes:  # type: ignore[no-untyped-def]
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def bare(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await _read_body(receive)
    await send(_HEAD)
    await send(_BODY)


async def decode(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    payload = _decoder.decode(await _read_body(receive))
    await _answer(send, _encoder.encode({"ok": True, "id": payload["data"]["key"]["id"]}))


async def _answer(send, body: bytes) -> None:  # type: ignore[no-untyped-def]
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_SCHEMA = """
CREATE TABLE contacts (id bigserial PRIMARY KEY, wa_id text NOT NULL UNIQUE, name text,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE conversations (id bigserial PRIMARY KEY, instance text NOT NULL,
    contact_id bigint NOT NULL REFERENCES contacts (id), last_seq bigint NOT NULL DEFAULT 0,
    last_message_preview text, last_message_at timestamptz, unread_count integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (instance, contact_id));
CREATE INDEX ON conversations (last_message_at DESC, id DESC);
CREATE TABLE messages (id bigserial PRIMARY KEY,
    conversation_id bigint NOT NULL REFERENCES conversations (id),
    seq bigint NOT NULL, instance text NOT NULL, external_id text NOT NULL, direction text NOT NULL,
    type text NOT NULL, body text, sent_at timestamptz, received_at timestamptz NOT NULL DEFAULT now(),
    raw jsonb NOT NULL, UNIQUE (instance, external_id), UNIQUE (conversation_id, seq));
CREATE FUNCTION floor_ingest(p_instance text, p_wa_id text[], p_name text[], p_ext text[], p_body text[],
        p_sent timestamptz[], p_raw text[])
    RETURNS TABLE (idx integer, conversation_id bigint, seq bigint, message_id bigint)
LANGUAGE plpgsql AS $$
DECLARE v_contact bigint; v_conv bigint; v_seq bigint; v_msg bigint;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ext, 1), 0) LOOP
        INSERT INTO contacts (wa_id, name) VALUES (p_wa_id[i], p_name[i])
            ON CONFLICT (wa_id) DO UPDATE
                SET name = coalesce(EXCLUDED.name, contacts.name), updated_at = now()
            RETURNING id INTO v_contact;
        INSERT INTO conversations AS c (instance, contact_id, last_seq, last_message_preview, last_message_at,
                unread_count)
            VALUES (p_instance, v_contact, 1, left(p_body[i], 200), p_sent[i], 1)
            ON CONFLICT (instance, contact_id) DO UPDATE SET last_seq = c.last_seq + 1,
                last_message_preview = EXCLUDED.last_message_preview,
                last_message_at = EXCLUDED.last_message_at,
                unread_count = c.unread_count + 1
            RETURNING id, last_seq INTO v_conv, v_seq;
        v_msg := NULL;
        INSERT INTO messages
                (conversation_id, seq, instance, external_id, direction, type, body, sent_at, raw)
            VALUES (v_conv, v_seq, p_instance, p_ext[i], 'in', 'text', p_body[i], p_sent[i], p_raw[i]::jsonb)
            ON CONFLICT (instance, external_id) DO NOTHING RETURNING id INTO v_msg;
        IF v_msg IS NULL THEN  -- a redelivery: take the seq back (the peer rolls its transaction back)
            UPDATE conversations SET last_seq = last_seq - 1 WHERE id = v_conv;
        END IF;
        idx := i; conversation_id := v_conv; seq := v_seq; message_id := v_msg;
        RETURN NEXT;
    END LOOP;
END $$;
"""

_FLIGHTS = 4
_MAX_BATCH = 64


class _GroupCommit:
    """Whatever queued while the previous batches were in flight, as one call, one COMMIT, one pipeline."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.pool, self.redis = pool, redis
        self.queue: list[tuple[dict, asyncio.Future[bytes]]] = []
        self.flights = 0
        self.tasks: set[asyncio.Future[None]] = set()

    def submit(self, data: dict) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.queue.append((data, future))
        if self.flights < _FLIGHTS:
            self.flights += 1
            task = asyncio.ensure_future(self._fly())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return future

    async def _fly(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[:_MAX_BATCH], self.queue[_MAX_BATCH:]
                await self._apply(batch)
        finally:
            self.flights -= 1

    async def _apply(self, batch: list[tuple[dict, asyncio.Future[bytes]]]) -> None:
        items = [data for data, _ in batch]
        try:
            rows = await self.pool.fetch(
                "SELECT * FROM floor_ingest($1, $2, $3, $4, $5, $6, $7)",
                "bench",
                [d["key"]["remoteJid"] for d in items],
                [d.get("pushName") for d in items],
                [d["key"]["id"] for d in items],
                [d["message"].get("conversation") for d in items],
                [datetime.fromtimestamp(int(d["messageTimestamp"]), UTC) for d in items],
                [_encoder.encode(d).decode() for d in items],
            )
            pipe = self.redis.pipeline(transaction=False)
            for row, data in zip(rows, items, strict=True):
                if row["message_id"] is not None:
                    event = {
                        "type": "message.created",
                        "conversation_id": row["conversation_id"],
                        "seq": row["seq"],
                        "data": {"id": row["message_id"], "body": data["message"]},
                    }
                    pipe.publish(f"conv:{row['conversation_id']}", _encoder.encode(event))
                    pipe.delete(f"page:{row['conversation_id']}")
            await pipe.execute()
        except Exception as exc:  # every request of the batch fails, as a 503 would
            for _, future in batch:
                future.set_exception(exc)
            return
        for row, (_, future) in zip(rows, batch, strict=True):
            future.set_result(
                _encoder.encode(
                    {
                        "ok": True,
                        "conversation_id": row["conversation_id"],
                        "seq": row["seq"],
                        "message_id": row["message_id"],
                        "duplicate": row["message_id"] is None,
                    }
                )
            )


def ingest_app(dsn: str):  # type: ignore[no-untyped-def]
    state: dict[str, _GroupCommit] = {}

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await receive()
            conn = await asyncpg.connect(dsn)
            await conn.execute(_SCHEMA)
            await conn.close()
            pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
            state["commit"] = _GroupCommit(pool, aioredis.Redis.from_url("redis://127.0.0.1:6379/13"))
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        payload = _decoder.decode(await _read_body(receive))
        await _answer(send, await state["commit"].submit(payload["data"]))

    return app


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    app = ingest_app(sys.argv[3]) if mode == "ingest" else {"bare": bare, "decode": decode}[mode]
    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
