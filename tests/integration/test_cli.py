"""The admin CLI and demo data, run as a user runs them, against the test database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.cli import main
from app.config import get_settings

Client = AsyncTestClient[Litestar]


@pytest.fixture
def cli(database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://crm.example.com")
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def run(cli: CliRunner, *args: str, input: str | None = None) -> dict:
    result = cli.invoke(main, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_admin_bootstrap_prints_webhook_url_and_secret(cli: CliRunner):
    slug = "acme-" + __import__("secrets").token_hex(3)
    org = run(cli, "admin", "create-org", "Acme Support", "--slug", slug, "--json")
    assert org["slug"] == slug
    agent = run(
        cli,
        "admin",
        "create-agent",
        "--org",
        slug,
        "--email",
        f"Ana@{slug}.test",
        "--name",
        "Ana",
        "--role",
        "admin",
        "--password",
        "s3cret-passw0rd",
        "--json",
    )
    assert agent["email"] == f"ana@{slug}.test" and agent["role"] == "admin"
    instance = run(
        cli, "admin", "create-instance", "--org", slug, "--gateway", "evolution", "--name", slug, "--json"
    )
    assert instance["webhook_url"] == f"https://crm.example.com/api/webhooks/evolution/{slug}"
    assert len(instance["webhook_secret"]) >= 32

    duplicate = cli.invoke(main, ["admin", "create-org", "Again", "--slug", slug])
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    unknown = cli.invoke(
        main, ["admin", "create-instance", "--org", "nope", "--gateway", "evolution", "--name", "x"]
    )
    assert unknown.exit_code != 0 and "no organisation" in unknown.output
    # A Cloud API instance cannot tell its webhooks apart without its phone number id: refused, not created.
    cloud = ["admin", "create-instance", "--org", slug, "--gateway", "cloudapi", "--name", f"{slug}-cloud"]
    without = cli.invoke(main, cloud)
    assert without.exit_code != 0 and "--phone-number-id" in without.output
    assert run(cli, *cloud, "--phone-number-id", "106540352242922", "--json")["phone_number_id"] == (
        "106540352242922"
    )
    short = cli.invoke(
        main,
        ["admin", "create-agent", "--org", slug, "--email", "b@x.test", "--name", "B", "--password", "short"],
    )
    assert short.exit_code != 0 and "at least 8" in short.output


async def test_demo_data_gives_a_working_login_and_webhook(cli: CliRunner, client: Client):
    import asyncio

    result = await asyncio.to_thread(cli.invoke, main, ["demo-data"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    demo = json.loads(result.output)
    assert {i["gateway"] for i in demo["instances"]} == {"wppconnect", "evolution", "cloudapi"}

    login = await client.post("/api/auth/login", json=demo["login"])
    assert login.status_code == 200
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    listing = (await client.get("/api/whatsapp-optimized/conversations", headers=headers)).json()["items"]
    assert len(listing) == 3 and all(c["unread_count"] >= 1 for c in listing)

    wpp = next(i for i in demo["instances"] if i["gateway"] == "wppconnect")
    body = {
        "event": "onmessage",
        "session": wpp["name"],
        "id": "false_5511912340000@c.us_3EB0DEMO",
        "from": "5511912340000@c.us",
        "to": "5511900000000@c.us",
        "body": "oi",
        "type": "chat",
        "t": 1764000000,
    }
    response = await client.post(
        f"/api/webhooks/wppconnect/{wpp['name']}",
        json=body,
        headers={"X-Webhook-Secret": wpp["webhook_secret"]},
    )
    assert response.status_code == 200 and response.json()["created"] == 1


async def test_deactivating_or_signing_out_an_agent_refuses_their_tokens(cli: CliRunner, client: Client):
    async def admin(*args: str) -> dict:
        return await asyncio.to_thread(run, cli, "admin", *args, "--json")

    slug = "acme-" + __import__("secrets").token_hex(3)
    await admin("create-org", "Acme", "--slug", slug)
    email, password = f"bia@{slug}.test", "s3cret-passw0rd"
    await admin("create-agent", "--org", slug, "--email", email, "--name", "Bia", "--password", password)

    async def log_in() -> httpx.Response:
        return await client.post("/api/auth/login", json={"email": email, "password": password})

    async def inbox(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return (await client.get("/api/whatsapp-optimized/conversations", headers=headers)).status_code

    async def refused_soon(token: str) -> bool:
        for _ in range(100):  # the revocation reaches this process by NOTIFY: a moment at most
            if await inbox(token) == 401:
                return True
            await asyncio.sleep(0.02)
        return False

    first = (await log_in()).json()["access_token"]
    assert await inbox(first) == 200
    assert (await admin("sign-out-agent", "--email", email))["email"] == email
    assert await refused_soon(first)
    second = (await log_in()).json()["access_token"]
    assert await inbox(second) == 200

    assert (await admin("set-agent-active", "--email", email, "--inactive"))["is_active"] is False
    assert await refused_soon(second)
    assert (await log_in()).status_code == 401
    await admin("set-agent-active", "--email", email, "--active")
    assert await inbox(second) == 401  # reactivation does not bring old tokens back
    assert await inbox((await log_in()).json()["access_token"]) == 200

    unknown = await asyncio.to_thread(
        cli.invoke, main, ["admin", "sign-out-agent", "--email", f"x@{slug}.test"]
    )
    assert unknown.exit_code != 0 and "not found" in unknown.output
