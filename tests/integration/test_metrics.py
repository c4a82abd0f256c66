"""/metrics: Prometheus text for its own bearer token only; counters follow traffic; labels stay bounded."""

from __future__ import annotations

import dataclasses
import secrets

from litestar.plugins.prometheus import PrometheusController
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.server.core import create_app
from tests.kit.api import login
from tests.kit.data import fixture_for, post_webhook, with_message_id
from tests.kit.factories import create_tenant


def _value(text: str, name: str) -> float:
    """The sample `name` (with its labels, exactly) in Prometheus text format; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_metrics_are_off_without_a_token(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_metrics_need_their_token_and_count_traffic(settings: Settings, session: AsyncSession):
    token = secrets.token_urlsafe(24)
    with_token = dataclasses.replace(settings, app=dataclasses.replace(settings.app, metrics_token=token))
    async with AsyncTestClient(app=create_app(with_token)) as client:
        assert (await client.get("/metrics")).status_code == 401
        agent_jwt = await login(client, (await create_tenant(session)).agent.email)
        assert (await client.get("/metrics", headers=agent_jwt)).status_code == 401  # a JWT is not it
        scrape = {"Authorization": f"Bearer {token}"}
        before = (await client.get("/metrics", headers=scrape)).text

        tenant = await create_tenant(session)
        instance = tenant.instance("evolution")
        text = fixture_for("evolution", "v1_messages_upsert_text", instance)
        for index in range(2):
            body = with_message_id("evolution", text, f"METRIC{index}")
            assert (await post_webhook(client, "evolution", instance, body)).status_code == 200
        auth = await login(client, tenant.agent.email)
        for _ in range(2):
            await client.get("/api/whatsapp-optimized/conversations", headers=auth)

        response = await client.get("/metrics", headers=scrape)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        after = response.text
        name = 'crm_messages_persisted_total{gateway="evolution"}'
        assert _value(after, name) - _value(before, name) == 2
        assert (
            _value(after, "crm_ingest_transaction_seconds_count")
            - _value(before, "crm_ingest_transaction_seconds_count")
            == 2
        )
        # Route templates, not ids, label the HTTP metrics.
        assert 'path="/api/webhooks/{gateway}/{instance}"' in after
        assert instance.name not in after


def _with_metrics_token(settings: Settings) -> tuple[Settings, dict[str, str]]:
    token = secrets.token_urlsafe(24)
    app = dataclasses.replace(settings.app, metrics_token=token)
    return dataclasses.replace(settings, app=app), {"Authorization": f"Bearer {token}"}


async def test_metrics_is_litestars_prometheus_controller_behind_the_token_guard(settings: Settings):
    with_token, scrape = _with_metrics_token(settings)
    app = create_app(with_token)
    handler = app.route_handler_method_map["/metrics"]["GET"]
    assert isinstance(handler.fn.__self__, PrometheusController)  # Litestar's own handler, not a copy
    assert handler.fn.__func__ is PrometheusController.get.fn
    async with AsyncTestClient(app=app) as client:
        refused = await client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["detail"] == "a valid metrics token is required"
        for _ in range(2):
            answer = await client.get("/metrics", headers=scrape)
            assert answer.status_code == 200
        assert "# TYPE crm_webhooks_total counter" in answer.text
        assert 'path="/metrics"' not in answer.text  # scrapes are not request metrics
        schema = (await client.get("/schema/openapi.json")).json()
        assert "/metrics" not in schema["paths"]


async def test_stats_and_metrics_read_one_set_of_counters(settings: Settings, session: AsyncSession):
    """/stats' process figures are the Prometheus counters themselves: two apps of one process both see the
    webhooks either served, and /stats agrees with /metrics to the unit."""
    with_token, scrape = _with_metrics_token(settings)
    tenant = await create_tenant(session)
    instance = tenant.instance("evolution")
    text = fixture_for("evolution", "v1_messages_upsert_text", instance)
    async with AsyncTestClient(app=create_app(with_token)) as first:
        body = with_message_id("evolution", text, "ONESET0")
        for _ in range(2):  # a message and its redelivery
            assert (await post_webhook(first, "evolution", instance, body)).status_code == 200
    async with AsyncTestClient(app=create_app(with_token)) as client:
        admin = await login(client, tenant.admin.email)
        stats = await client.get("/api/whatsapp-optimized/stats", headers=admin)
        exposed = (await client.get("/metrics", headers=scrape)).text
    assert stats.status_code == 200, stats.text
    process = stats.json()["process"]
    ingest = process["ingest"]
    assert ingest["per_gateway"]["evolution"] == _value(exposed, 'crm_webhooks_total{gateway="evolution"}')
    assert ingest["per_gateway"]["evolution"] >= 2  # the first app's webhooks, seen by the second
    assert ingest["messages_persisted"] == sum(
        _value(exposed, f'crm_messages_persisted_total{{gateway="{gateway}"}}')
        for gateway in ingest["per_gateway"]
    )
    assert ingest["duplicates_ignored"] == sum(
        _value(exposed, f'crm_duplicates_ignored_total{{gateway="{gateway}"}}')
        for gateway in ingest["per_gateway"]
    )
    assert process["websocket"]["frames_sent"] == _value(exposed, "crm_websocket_frames_sent_total")
