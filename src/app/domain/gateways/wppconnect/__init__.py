"""WPPConnect Server (wppconnect-team/wppconnect-server) gateway."""

from app.domain.gateways.wppconnect.webhook import WppConnectAdapter, parse_webhook

__all__ = ["WppConnectAdapter", "parse_webhook"]
