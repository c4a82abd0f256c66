"""The lean webhook path (issue 13) answers every webhook exactly as Litestar's route does — success,
duplicate and each refusal — and serves only what it should."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.server.core import create_asgi
from app.server.webhook_path import TEMPLATE, WebhookPath, webhook_names
from tests.kit.data import fixture_for, signed_headers, with_message_id
from tests.kit.factories import create_tenant

Client = AsyncTestClient[Litestar]
IGNORED_HEADERS = {"date", "server"}
SIGNATURE = "sha256=" + "0" * 64  # well formed, wrong: judged only once the body is read


@pytest.fixture
async def lean(settings: Settings) -> AsyncIterator[tuple[Client, WebhookPath]]:
    # Five failed verifications (or unknown names) a minute, so the 429 is reachable; budgets of its own (the
    # run's other tests fail verifications from the same test client address under the shared prefix).
    tight = replace(
        settings,
        auth=replace(settings.auth, webhook_auth_failures_per_minute=5),
        redis=replace(settings.redis, key_prefix=f"crm-lean-{secrets.token_hex(4)}"),
    )
    asgi = create_asgi(tight)
    path = asgi.app.app  # CachedPageFastPath → RefusedLoginShedding → WebhookPath → Litestar
    assert isinstance(path, WebhookPath)
    async with AsyncTestClient(app=asgi) as client:  # type: ignore[arg-type]
        yield client, path


def _headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in IGNORED_HEADERS}


async def _both(client: Client, path: WebhookPath, url: str, make: Any) -> tuple[Any, Any]:
    """The same request (built twice: `make(n)` for n = 0 lean, 1 Litestar) through each path."""
    answers = []
    for n, enabled in enumerate((True, False)):
        path.enabled = enabled
        served = path.served
        body, headers = make(n)
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)  # a list: repeats
        answers.append(await client.post(url, content=body, headers=[*pairs, ("x-request-id", f"req-{n}")]))
        assert path.served == served + (1 if enabled else 0)
    path.enabled = True
    lean, litestar = answers
    assert lean.headers["x-request-id"] == "req-0" and litestar.headers["x-request-id"] == "req-1"
    return lean, litestar


def _same(lean: Any, litestar: Any, status: int) -> None:
    assert (lean.status_code, litestar.status_code) == (status, status), (lean.text, litestar.text)
    assert lean.content == litestar.content
    lean_headers, litestar_headers = _headers(lean), _headers(litestar)
    lean_headers.pop("x-request-id"), litestar_headers.pop("x-request-id")
    assert lean_headers == litestar_headers


async def test_the_lean_path_answers_as_litestar_does(
    lean: tuple[Client, WebhookPath], session: AsyncSession
):
    client, path = lean
    tenant = await create_tenant(session)
    evolution, cloudapi = tenant.instance("evolution"), tenant.instance("cloudapi")
    base = fixture_for("evolution", "v2_messages_upsert_text", evolution)
    url = f"/api/webhooks/evolution/{evolution.name}"

    def message(message_id: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(with_message_id("evolution", base, message_id, text="lean")).encode()
        return body, signed_headers("evolution", body, evolution)

    # Success (a new message each), then each one again (a duplicate each).
    _same(*await _both(client, path, url, lambda n: message(f"LEAN-NEW-{n}")), 200)
    _same(*await _both(client, path, url, lambda n: message(f"LEAN-NEW-{n}")), 200)
    ok, _ = await _both(client, path, url, lambda n: message(f"LEAN-NEW-{n}"))
    assert ok.json() == {"status": "ok", "created": 0, "duplicates": 1, "statuses": 0, "ignored": 0}

    # The head as the lean path reads it from the bare scope: a repeated header is read as Litestar reads
    # it (the first), the secret may come as a plain ?token= (and its spelling is judged the same).
    def repeated(n: int) -> tuple[bytes, list[tuple[str, str]]]:
        body, headers = message(f"LEAN-REPEAT-{n}")
        return body, [*headers.items(), ("x-webhook-secret", "a-second-and-wrong-secret")]

    lean_answer, litestar_answer = await _both(client, path, url, repeated)
    _same(lean_answer, litestar_answer, litestar_answer.status_code)  # 401: two failures of the budget
    token_url = f"{url}?token={evolution.webhook_secret}&other=1&other=2"
    _same(*await _both(client, path, token_url, lambda n: (message(f"LEAN-TOKEN-{n}")[0], {})), 200)

    good_body, good_headers = message("LEAN-X")
    shapeless = json.dumps({"event": "messages.upsert", "instance": evolution.name, "data": 7}).encode()
    foreign = json.dumps({**json.loads(good_body), "instance": "someone-else"}).encode()
    too_large = b"x" * (1024 * 1024 + 1)  # Cloud API's limit is 1 MiB
    refusals: list[tuple[str, Any, int]] = [
        ("/api/webhooks/nosuch/x", lambda n: (b"{}", {}), 404),
        ("/api/webhooks/evolution/no-such-instance", lambda n: message("A"), 404),
        (url, lambda n: (b"{not json", good_headers), 400),
        (url, lambda n: (shapeless, good_headers), 422),
        (url, lambda n: (foreign, good_headers), 422),
        (
            f"/api/webhooks/cloudapi/{cloudapi.name}",
            lambda n: (too_large, {"x-hub-signature-256": SIGNATURE}),
            413,
        ),
        (url, lambda n: (good_body, {"x-webhook-secret": "wrong"}), 401),
    ]
    for target, make, status in refusals:
        lean_answer, litestar_answer = await _both(client, path, target, make)
        _same(lean_answer, litestar_answer, status)
    # Four failures so far, three more spend the pair's budget: both paths refuse even the right secret.
    for _ in range(3):
        await client.post(url, content=good_body, headers={"x-webhook-secret": "wrong"})
    lean_answer, litestar_answer = await _both(client, path, url, lambda n: (good_body, good_headers))
    assert lean_answer.status_code == litestar_answer.status_code == 429
    assert lean_answer.content == litestar_answer.content and "retry-after" in lean_answer.headers


def _requests_counted(status: int) -> float:
    labels = {"method": "POST", "path": TEMPLATE, "status_code": str(status), "app_name": "whatsapp_crm"}
    return REGISTRY.get_sample_value("crm_http_requests_total", labels) or 0.0


async def test_the_lean_path_counts_in_litestars_prometheus_series(
    lean: tuple[Client, WebhookPath], session: AsyncSession
):
    client, path = lean
    tenant = await create_tenant(session)
    instance = tenant.instance("evolution")
    base = fixture_for("evolution", "v2_messages_upsert_text", instance)
    url = f"/api/webhooks/evolution/{instance.name}"
    for n, enabled in enumerate((False, True)):  # Litestar's middleware first, then the lean path
        path.enabled = enabled
        body = json.dumps(with_message_id("evolution", base, f"COUNTED-{n}")).encode()
        ok, refused = _requests_counted(200), _requests_counted(401)
        assert (
            await client.post(url, content=body, headers=signed_headers("evolution", body, instance))
        ).status_code == 200
        assert (await client.post(url, content=body, headers={"x-webhook-secret": "no"})).status_code == 401
        assert (_requests_counted(200), _requests_counted(401)) == (ok + 1, refused + 1), enabled
    path.enabled = True


def test_only_webhook_posts_without_an_origin_take_the_lean_path():
    def scope(method: str, path: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "headers": list(headers)}

    assert webhook_names(scope("POST", "/api/webhooks/evolution/bench")) == ("evolution", "bench")
    assert webhook_names(scope("GET", "/api/webhooks/cloudapi/bench")) is None  # the handshake
    assert webhook_names(scope("POST", "/api/webhooks/evolution/bench/")) is None
    assert webhook_names(scope("POST", "/api/webhooks/evolution")) is None
    assert webhook_names(scope("POST", "/api/webhooks//bench")) is None
    assert webhook_names(scope("POST", "/api/webhooks/evolution/bench", (b"origin", b"https://x"))) is None
