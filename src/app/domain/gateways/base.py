"""The contract every gateway adapter fulfils (WPPConnect Server, Evolution API, WhatsApp Cloud API)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from app.domain.gateways.events import GatewayEvent
from app.lib.domain_errors import DomainError, NotFound, Unauthorized


class WebhookRejected(DomainError):
    """The body is not a webhook of this gateway (malformed JSON, wrong shape). Maps to 400/422."""

    def __init__(self, detail: str, *, status_code: int = 400) -> None:
        super().__init__(detail)
        self.status_code = status_code


class WebhookUnauthorized(Unauthorized):
    """Missing or wrong signature / secret. Maps to 401."""


class WebhookTargetUnknown(NotFound):
    """No such gateway, or no active instance of that name. Maps to 404."""


@dataclass(frozen=True, slots=True)
class InstanceCredentials:
    """What verification needs to know about the receiving instance (loaded from the database)."""

    name: str
    webhook_secret: (
        str  # WPPConnect/Evolution: shared token; Cloud API: the app secret for X-Hub-Signature-256
    )
    verify_token: str | None = None  # Cloud API GET handshake token


@dataclass(frozen=True, slots=True)
class WebhookHead:
    """What arrives before the body: enough to refuse most forgeries without reading (up to
    WEBHOOK_MAX_BODY_BYTES of) upload. Header names are lower-case."""

    headers: Mapping[str, str]
    query: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class WebhookRequest(WebhookHead):
    """The parts of an HTTP request an adapter may look at, body included."""

    # `verify` sees the unverified body in the one buffer it was read into (ingest.bodies), never a copy.
    body: bytes | bytearray


class GatewayAdapter(Protocol):
    kind: str  # "wppconnect" | "evolution" | "cloudapi"

    def verify_head(self, head: WebhookHead, instance: InstanceCredentials) -> bool:
        """Verify what headers and query allow, before the body is read.

        Raise WebhookUnauthorized to refuse. True: the request is verified and `verify` need not run;
        False: the credential is in, or over, the body, and `verify` must decide once it is read.
        """

    def verify(self, request: WebhookRequest, instance: InstanceCredentials) -> None:
        """Raise WebhookUnauthorized unless the request provably comes from the gateway of this instance.

        Must compare secrets in constant time (hmac.compare_digest). May parse the body only to read a
        secret field (Evolution's `apikey`), and must not trust anything else in it before verifying.
        """

    def parse(self, body: bytes) -> list[GatewayEvent]:
        """Turn the raw body into normalised events. Raise WebhookRejected for malformed JSON or wrong shape.

        Unknown event types yield IgnoredEvent, never an exception (the gateway would retry forever).
        """
