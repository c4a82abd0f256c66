from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from app.domain.gateways.cloudapi.webhook import verify_subscription
from app.domain.gateways.instances import credentials_of
from app.domain.gateways.schemas import WebhookAck
from app.domain.ingest.intake import WebhookIntake
from app.domain.ingest.service import WebhookService
from app.domain.ingest.throttle import webhook_throttle_of
from app.lib.errors import problem
from app.lib.openapi import problems
from app.lib.throttle import client_address


class WebhookController(Controller):
    """Gateways post here. Not behind JWT: each request is verified by its instance's secret or signature;
    an (address, instance) pair failing verification too often is refused for a while (`ingest.throttle`)."""

    path = "/api/webhooks"
    tags = ["webhooks"]

    @post(
        "/{gateway:str}/{instance:str}",
        status_code=200,
        summary="Receive a gateway webhook",
        responses=problems(
            (400, "The body is not valid JSON"),
            (401, "The instance's webhook secret or signature is missing or wrong"),
            (404, "Unknown gateway or instance"),
            (413, "The body is larger than the gateway's limit (WEBHOOK_MAX_BODY_BYTES; Cloud API 1 MiB)"),
            (422, "Not this gateway's payload shape, addressed to another account, or a field out of bounds"),
            (429, "Too many failed verifications or unknown names from this address lately (Retry-After)"),
            (503, "Database unavailable, or too many unverified bodies being read (Retry-After)"),
        ),
    )
    async def receive(
        self,
        request: Request,
        gateway: FromPath[str],
        instance: FromPath[str],
        webhook_intake: NamedDependency[WebhookIntake],
    ) -> WebhookAck:
        # The same use case the lean ASGI path (app.server.webhook_path) runs for most webhooks.
        return await webhook_intake.receive(request, gateway, instance)

    @get(
        "/{gateway:str}/{instance:str}",
        media_type="text/plain",
        summary="Cloud API subscription handshake",
        responses=problems(
            (400, "hub.challenge missing"),
            (401, "hub.mode is not 'subscribe', or hub.verify_token is not the instance's"),
            (404, "Not a Cloud API gateway, or an unknown instance"),
            (429, "Too many failed verifications or unknown names from this address lately (Retry-After)"),
            503,
        ),
    )
    async def cloudapi_handshake(
        self,
        request: Request,
        gateway: FromPath[str],
        instance: FromPath[str],
        webhook_intake: NamedDependency[WebhookIntake],
    ) -> str:
        # Same path as the POST (a static "cloudapi" segment would shadow it); only Cloud API has a handshake.
        if gateway != "cloudapi":
            raise problem(404, f"no GET handshake for gateway '{gateway}'")
        async with webhook_throttle_of(request).judging(client_address(request), gateway, instance):
            lookup = WebhookService(webhook_intake.sessions, webhook_intake.recent)
            found = await lookup.find_instance(gateway, instance)
            return verify_subscription(dict(request.query_params), credentials_of(found))
