"""All models, imported here so Alembic and the ORM registry see every table."""

from app.db.models.agent import Agent, AgentRole
from app.db.models.agent_revocation import DELETED_GENERATION, AgentRevocation
from app.db.models.base import Base, metadata
from app.db.models.contact import Contact
from app.db.models.conversation import Conversation, ConversationStatus
from app.db.models.instance import GatewayKind, WhatsAppInstance
from app.db.models.media import Media, MediaState
from app.db.models.message import Direction, Message, MessageStatus, MessageType
from app.db.models.organization import Organization

__all__ = [
    "DELETED_GENERATION",
    "Agent",
    "AgentRevocation",
    "AgentRole",
    "Base",
    "Contact",
    "Conversation",
    "ConversationStatus",
    "Direction",
    "GatewayKind",
    "Media",
    "MediaState",
    "Message",
    "MessageStatus",
    "MessageType",
    "Organization",
    "WhatsAppInstance",
    "metadata",
]
