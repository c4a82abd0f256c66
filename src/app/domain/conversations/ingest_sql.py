"""The statements ingest runs, built once at import.

Webhooks are the hot path: building a SQLAlchemy statement per call (and going through the ORM's bulk
persistence layer) cost more CPU than Postgres spent executing it. Core statements with bind parameters
are compiled once and reused from SQLAlchemy's compiled cache.
"""

from __future__ import annotations

from sqlalchemy import DateTime, Table, Uuid, bindparam, text, update
from sqlalchemy.dialects.postgresql import JSONB, insert

from app.db.models import Media, Message

messages: Table = Message.__table__  # type: ignore[assignment]
media: Table = Media.__table__  # type: ignore[assignment]

# A new message's whole write path (contact, conversation lock, message, summary) in one round trip:
# crm_ingest_message() (src/app/domain/ingest/ingest_message.sql documents the steps). No row = redelivery.
INGEST_MESSAGE = (
    text(
        "SELECT message_id, conversation_id, seq, contact_id, contact_name, status, last_message_at, "
        "last_message_preview, last_message_direction, unread_count FROM crm_ingest_message("
        ":org_id, :instance_id, :wa_id, :contact_name, :gateway_message_id, :direction, :type, :body, "
        ":status, :sent_at, :raw, :preview, :now, :message_id, :new_contact_id, :new_conversation_id)"
    )
    .bindparams(
        bindparam("org_id", type_=Uuid()),
        bindparam("instance_id", type_=Uuid()),
        bindparam("message_id", type_=Uuid()),
        bindparam("new_contact_id", type_=Uuid()),
        bindparam("new_conversation_id", type_=Uuid()),
        bindparam("sent_at", type_=DateTime(timezone=True)),
        bindparam("now", type_=DateTime(timezone=True)),
        bindparam("raw", type_=JSONB()),
    )
    .columns(last_message_at=DateTime(timezone=True))
)

INSERT_MEDIA = insert(media).values(
    id=bindparam("id"),
    org_id=bindparam("org_id"),
    message_id=bindparam("message_id"),
    gateway_ref=bindparam("gateway_ref"),
    mime_type=bindparam("mime_type"),
    size_bytes=bindparam("size_bytes"),
    sha256=bindparam("sha256"),
    filename=bindparam("filename"),
    source_url=bindparam("source_url"),
    inline_base64=bindparam("inline_base64"),
    state="pending",
    created_at=bindparam("now"),
    updated_at=bindparam("now"),
)

# Forward-only (docs/ARCHITECTURE.md invariant 5): the caller passes the statuses that may precede the
# new one.
ADVANCE_STATUS = (
    update(messages)
    .where(
        messages.c.instance_id == bindparam("of_instance"),
        messages.c.gateway_message_id == bindparam("of_gateway_message_id"),
        messages.c.status.in_(bindparam("allowed_from", expanding=True)),
    )
    .values(status=bindparam("new_status"), updated_at=bindparam("now"))
    .returning(messages.c.id, messages.c.conversation_id, messages.c.seq)
)
