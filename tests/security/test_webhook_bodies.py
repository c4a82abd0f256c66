"""Webhook bodies under hostile load (issue 12, finding 2; finding 12's text cap).

Anyone who knows an instance's name can make the API read a body before it can judge the request: Cloud API's
signature and Evolution's in-body `apikey` are over, or in, the body. These tests prove that such unverified
reads cost a bounded amount of memory however many arrive at once, that Cloud API bodies (never inline media)
are refused by size before they are read, that a legitimate big Evolution media webhook still lands, and that
an inbound text longer than WhatsApp's 65,536 characters is stored capped with nothing lost.

The load cases run against a real API process (uvicorn, its flow control included) and read its resident
memory from /proc; the read-counting cases drive the ASGI app directly, handing the body over chunk by chunk.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Media, Message, WhatsAppInstance
from app.domain.conversations.storable import MAX_TEXT_CHARS, TRUNCATION_MARKER
from app.domain.ingest.bodies import UNVERIFIED_READ_WAIT_S
from tests.kit.api import from_address
from tests.kit.asgi_delivery import CHUNK, deliver, live_app, post_scope
from tests.kit.data import TEXT_FIXTURES, env_for, fixture_for, signed_headers, text_body, with_message_id
from tests.kit.factories import create_tenant
from tests.kit.measure import MiB, RssSampler, cpu_seconds, rss_bytes
from tests.kit.processes import ApiProcess, api_processes
from tests.security.support import row_counts

HOSTILE_BODY_BYTES = 23 * MiB  # just under WEBHOOK_MAX_BODY_BYTES (24 MiB), as in the issue
HOSTILE_PER_GATEWAY = 20
RSS_RISE_LIMIT = 100 * 1000 * 1000  # the "≤ 100 MB"
WRONG_SIGNATURE = "sha256=" + "0" * 64  # well-formed, so only the body can refute it
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def api(settings: Settings) -> Iterator[ApiProcess]:
    """One API process with the production body limits (24 MiB; Cloud API 1 MiB) and a failure throttle
    too high to step in: what is measured is the body reading alone."""
    env = env_for(
        settings,
        WEBHOOK_MAX_BODY_BYTES=str(24 * MiB),
        WEBHOOK_AUTH_FAILURES_PER_MINUTE="100000",
        REDIS_KEY_PREFIX=f"crm-bodies-{secrets.token_hex(4)}",
    )
    with api_processes(1, env) as [process]:
        yield process


def padded_json(data: dict[str, Any], size: int) -> bytes:
    """`data` as JSON of exactly `size` bytes, grown by a `padding` string."""
    skeleton = json.dumps({**data, "padding": ""}).encode()
    body = json.dumps({**data, "padding": "A" * (size - len(skeleton))}).encode()
    assert len(body) == size
    return body


def evolution_with_apikey(instance: WhatsAppInstance, message_id: str, apikey: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text_body("evolution", instance, message_id))
    return data | {"apikey": apikey}


async def post_verified(
    http: httpx.AsyncClient, api: ApiProcess, gateway: str, instance: WhatsAppInstance
) -> None:
    body = text_body(gateway, instance, f"AFTER-{gateway}-{secrets.token_hex(4)}")
    url = f"{api.base_url}/api/webhooks/{gateway}/{instance.name}"
    response = await http.post(url, content=body, headers=signed_headers(gateway, body, instance))
    assert response.status_code == 200 and response.json()["created"] == 1, (gateway, response.text)


async def test_forty_concurrent_unverified_23_mib_bodies_raise_api_memory_by_at_most_100_mb(
    api: ApiProcess, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    wpp, evo, cloud = (tenant.instance(g) for g in ("wppconnect", "evolution", "cloudapi"))
    # The same two bodies for every sender: the test process holds 46 MiB, not 920.
    cloud_body = padded_json(json.loads(text_body("cloudapi", cloud, "HOSTILE-CLOUD")), HOSTILE_BODY_BYTES)
    evo_body = padded_json(evolution_with_apikey(evo, "HOSTILE-EVO", "not-the-apikey"), HOSTILE_BODY_BYTES)
    hostile = [
        (
            f"/api/webhooks/cloudapi/{cloud.name}",
            {**JSON, "x-hub-signature-256": WRONG_SIGNATURE},
            cloud_body,
        ),
        (f"/api/webhooks/evolution/{evo.name}", JSON, evo_body),  # no header secret: the in-body apikey mode
    ] * HOSTILE_PER_GATEWAY

    limits = httpx.Limits(max_connections=len(hostile) + 4, max_keepalive_connections=0)
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.21", limits=limits)
    async with httpx.AsyncClient(transport=transport, timeout=120.0, trust_env=False) as http:
        for gateway in ("wppconnect", "evolution", "cloudapi"):  # warm: imports, pools, caches
            await post_verified(http, api, gateway, tenant.instance(gateway))
        before = rss_bytes(api.pid)

        async def send(path: str, headers: dict[str, str], body: bytes) -> tuple[str, int]:
            response = await http.post(f"{api.base_url}{path}", content=body, headers=headers)
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) > 0, response.headers
            return path.split("/")[3], response.status_code

        async def verified_meanwhile() -> float:
            # Header-verified traffic takes no share of the unverified budget: it lands during the attack.
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            await post_verified(http, api, "wppconnect", wpp)
            return time.perf_counter() - started

        started, cpu_before = time.perf_counter(), cpu_seconds(api.pid)
        with RssSampler(api.pid) as sampler:
            *answers, meanwhile_s = await asyncio.gather(
                *(send(*request) for request in hostile), verified_meanwhile()
            )
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(api.pid) - cpu_before
        after = rss_bytes(api.pid)
        counts = Counter(answers)
        rise = (sampler.peak - before) / MiB
        print(
            f"\n40 x 23 MiB unverified: answers {dict(counts)} in {elapsed:.1f} s (API CPU {cpu:.1f} s); RSS "
            f"before {before / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB (+{rise:.0f}), after "
            f"{after / MiB:.0f} MiB ({sampler.samples} samples); a verified WPPConnect webhook meanwhile "
            f"{meanwhile_s * 1000:.0f} ms"
        )
        for (gateway, status), _ in counts.items():
            assert status in (401, 413, 503), (gateway, status, counts)
        # Cloud API bodies are KBs: 23 MiB is refused by its Content-Length, never read.
        assert counts[("cloudapi", 413)] == HOSTILE_PER_GATEWAY, counts
        assert sampler.peak - before <= RSS_RISE_LIMIT, (before, sampler.peak)

        for gateway in ("wppconnect", "evolution", "cloudapi"):  # everyone is still served
            await post_verified(http, api, gateway, tenant.instance(gateway))
        small_apikey = json.dumps(evolution_with_apikey(evo, "AFTER-apikey", evo.webhook_secret)).encode()
        response = await http.post(
            f"{api.base_url}/api/webhooks/evolution/{evo.name}", content=small_apikey, headers=JSON
        )
        assert response.status_code == 200 and response.json()["created"] == 1, response.text
    assert (await row_counts(engine, tenant.org_id))["messages"] == 8


async def test_a_big_inline_image_from_evolution_in_apikey_mode_still_lands(
    api: ApiProcess, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    evo = tenant.instance("evolution")
    data = with_message_id(
        "evolution", fixture_for("evolution", "v2_messages_upsert_image_base64", evo), "BIGIMG1"
    )
    data["apikey"] = evo.webhook_secret  # Evolution's own mode: the instance's api key in the body
    # ~6 MiB of base64 (WPPConnect and Evolution keep the 24 MiB limit; Cloud API's is 1 MiB)
    data["data"]["message"]["base64"] = "/9j/" + "A" * (6 * MiB)
    body = json.dumps(data).encode()
    async with from_address("127.0.0.22") as http:
        response = await http.post(
            f"{api.base_url}/api/webhooks/evolution/{evo.name}", content=body, headers=JSON
        )
    assert response.status_code == 200 and response.json()["created"] == 1, response.text
    print(f"\nEvolution apikey-mode webhook of {len(body) / MiB:.1f} MiB: {response.status_code}")
    async with async_sessionmaker(engine)() as s:
        inline = await s.scalar(select(Media.inline_base64).where(Media.org_id == tenant.org_id))
    assert inline == data["data"]["message"]["base64"]


async def test_an_oversized_cloudapi_body_is_413_without_being_read(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
):
    limit = settings.app.webhook_cloudapi_max_body_bytes
    async with live_app(settings) as app:
        tenant = await create_tenant(session)
        cloud = tenant.instance("cloudapi")
        path = f"/api/webhooks/cloudapi/{cloud.name}"
        body = padded_json(json.loads(text_body("cloudapi", cloud, "OVERSIZED")), 2 * limit)
        for headers in (
            signed_headers("cloudapi", body, cloud),
            {**JSON, "x-hub-signature-256": WRONG_SIGNATURE},
        ):
            announced = await deliver(app, path, headers, body)
            assert announced.status == 413, announced.answer
            assert announced.chunks_read == 0, f"{announced.chunks_read}/{announced.chunks_total}"
            # Chunked (no Content-Length): the read stops at the limit instead of buffering the rest.
            streamed = await deliver(app, path, headers, body, announce_length=False)
            assert streamed.status == 413, streamed.answer
            assert streamed.chunks_read <= limit // CHUNK + 1 < streamed.chunks_total, streamed
        print(
            f"\nCloud API body of {len(body)} bytes (limit {limit}): 413, chunks read: "
            f"{announced.chunks_read} announced / {streamed.chunks_read} of {streamed.chunks_total} chunked"
        )
        at_limit = padded_json(json.loads(text_body("cloudapi", cloud, "ATLIMIT")), limit)
        accepted = await deliver(app, path, signed_headers("cloudapi", at_limit, cloud), at_limit)
        assert accepted.status == 200 and accepted.answer["created"] == 1, accepted.answer
    assert (await row_counts(engine, tenant.org_id))["messages"] == 1


# --- the unverified read budget ---------------------------------------------------------------------------


class StalledUpload:
    """A POST into the ASGI app whose body arrives one chunk, then stalls until `finish()`."""

    def __init__(self, app: Any, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.app, self.path, self.body, self.headers = app, path, body, headers
        self.first_chunk_read = asyncio.Event()
        self._finish = asyncio.Event()
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.task = asyncio.create_task(self._run())

    def finish(self) -> None:
        self._finish.set()

    async def _run(self) -> None:
        half = len(self.body) // 2
        parts = [self.body[:half], self.body[half:]]

        async def receive() -> dict[str, Any]:
            if not parts:
                await asyncio.Event().wait()  # no more body: wait for the cancel
            if len(parts) == 1:
                self.first_chunk_read.set()
                await self._finish.wait()
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.response_headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}

        raw_headers = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        raw_headers += [(b"host", b"test"), (b"content-length", str(len(self.body)).encode())]
        await self.app(post_scope(self.path, raw_headers, b"", "192.0.2.60"), receive, send)


async def test_unverified_reads_beyond_the_budget_wait_briefly_then_get_503_while_verified_ones_pass(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
):
    reads = settings.app.webhook_unverified_reads
    async with live_app(settings) as app:
        tenant = await create_tenant(session)
        evo, wpp = tenant.instance("evolution"), tenant.instance("wppconnect")
        path = f"/api/webhooks/evolution/{evo.name}"

        def apikey_body(i: int) -> bytes:
            return json.dumps(evolution_with_apikey(evo, f"STALLED{i}", evo.webhook_secret)).encode()

        # Slow uploaders (legitimate ones, even) hold every share of the budget...
        stalled = [StalledUpload(app, path, apikey_body(i), JSON) for i in range(reads)]
        await asyncio.wait_for(asyncio.gather(*(s.first_chunk_read.wait() for s in stalled)), 5)
        # ...so one more unverified body is not read: after a short wait, 503 with Retry-After.
        started = time.perf_counter()
        refused = await deliver(app, path, JSON, apikey_body(reads))
        waited = time.perf_counter() - started
        assert refused.status == 503, refused.answer
        assert refused.chunks_read == 0, refused
        assert refused.answer["status"] == 503 and "retry" in refused.answer["detail"].lower(), refused.answer
        assert waited < UNVERIFIED_READ_WAIT_S + 2.0  # a guard against starvation only
        # Verified by its headers: no share needed, it is read and committed at once.
        body = text_body("wppconnect", wpp, "VERIFIED-DURING")
        verified = await deliver(
            app, f"/api/webhooks/wppconnect/{wpp.name}", signed_headers("wppconnect", body, wpp), body
        )
        assert verified.status == 200, verified.answer
        for upload in stalled:
            upload.finish()
        await asyncio.wait_for(asyncio.gather(*(s.task for s in stalled)), 10)
        assert [s.status for s in stalled] == [200] * reads
        # The budget is free again: the refused webhook's retry lands.
        retried = await deliver(app, path, JSON, apikey_body(reads))
        assert retried.status == 200, retried.answer
        print(
            f"\nbudget of {reads} unverified reads held: one more waited {waited:.2f} s -> 503; retried: 200"
        )
    assert (await row_counts(engine, tenant.org_id))["messages"] == reads + 2


# --- text longer than WhatsApp allows ---------------------------------------------------------------------


@pytest.mark.parametrize("gateway", ["wppconnect", "evolution", "cloudapi"])
async def test_an_inbound_text_over_65536_characters_is_stored_capped_and_kept_whole_in_raw(
    gateway: str, api: ApiProcess, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    text = "é" + secrets.token_hex(40_000)  # 80,001 characters, > WhatsApp's 65,536
    data = with_message_id(
        gateway, fixture_for(gateway, TEXT_FIXTURES[gateway], instance), "LONGTEXT1", text=text
    )
    body = json.dumps(data).encode()
    async with from_address("127.0.0.23") as http:
        response = await http.post(
            f"{api.base_url}/api/webhooks/{gateway}/{instance.name}",
            content=body,
            headers=signed_headers(gateway, body, instance),
        )
    assert response.status_code == 200 and response.json()["created"] == 1, response.text
    async with async_sessionmaker(engine)() as s:
        stored = (await s.execute(select(Message).where(Message.org_id == tenant.org_id))).scalar_one()
    assert stored.body is not None and len(stored.body) == MAX_TEXT_CHARS, len(stored.body or "")
    assert stored.body.endswith(TRUNCATION_MARKER)
    assert stored.body == text[: MAX_TEXT_CHARS - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER
    assert text in json.dumps(stored.raw, ensure_ascii=False), "the whole text is kept in raw"
    print(f"\n{gateway}: {len(text)} characters -> body {len(stored.body)}, raw keeps all")
