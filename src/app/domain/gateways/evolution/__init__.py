"""Evolution API (EvolutionAPI/evolution-api) gateway, v1 and v2 webhooks."""

from app.domain.gateways.evolution.webhook import EvolutionAdapter, parse_webhook

__all__ = ["EvolutionAdapter", "parse_webhook"]
