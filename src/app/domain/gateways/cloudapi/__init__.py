"""WhatsApp Cloud API (Meta) gateway."""

from app.domain.gateways.cloudapi.webhook import (
    CloudApiAdapter,
    parse_webhook,
    verify_signature,
    verify_subscription,
)

__all__ = ["CloudApiAdapter", "parse_webhook", "verify_signature", "verify_subscription"]
