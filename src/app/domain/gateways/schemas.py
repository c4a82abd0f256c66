from __future__ import annotations

from app.lib.schema import Schema


class WebhookAck(Schema):
    """What the gateway hears once the webhook's transaction has committed."""

    status: str
    created: int
    duplicates: int
    statuses: int
    ignored: int
