"""Which adapter handles which gateway kind (the `{gateway}` part of the webhook URL)."""

from __future__ import annotations

from app.domain.gateways.base import GatewayAdapter
from app.domain.gateways.cloudapi import CloudApiAdapter
from app.domain.gateways.evolution import EvolutionAdapter
from app.domain.gateways.wppconnect import WppConnectAdapter

GATEWAY_KINDS = ("wppconnect", "evolution", "cloudapi")

# Adapters hold no state: one instance each serves every request.
_ADAPTERS: dict[str, GatewayAdapter] = {
    adapter.kind: adapter for adapter in (WppConnectAdapter(), EvolutionAdapter(), CloudApiAdapter())
}


def get_adapter(kind: str) -> GatewayAdapter | None:
    return _ADAPTERS.get(kind)
