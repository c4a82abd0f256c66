"""The statements ingest runs, built once at import.

Webhooks are the hot path: building a SQLAlchemy statement per call (and going through the ORM's bulk
persistence layer) cost more CPU than Postgres spent executing it. Core statements over the tables, with
bind parameters, are compiled once and reused from SQLAlchemy's compiled cache.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Table, bindparam, case, func, select, update
from sqlalchemy.dialects.postgresql import insert

from app.db.models import Contact, Conversation, ConversationStatus, Media, Message

contacts: Table = Contact.__table__  # type: ignore[assignment]
conversations: Table = Conversation.__table__  # type: ignore[assignment]
messages: Table = Message.__table__  # type: ignore[assignment]
media: Table = Media.__table__  # type: ignore[assignment]

SELECT_CONTACT = select(contacts.c.id, contacts.c.name).where(
    contacts.c.org_id == bindparam("org_id"), contacts.c.wa_id == bindparam("wa_id")
)

_contact_values = insert(contacts).values(
    id=bindparam("id"),
    org_id=bindparam("org_id"),
    wa_id=bindparam("wa_id"),
    name=bindparam("name"),
    created_at=bindparam("now"),
    updated_at=bindparam("now"),
)
UPSERT_CONTACT = _contact_values.on_conflict_do_update(
    constraint="uq_contacts_org_wa_id",
    set_={
        "name": func.coalesce(_contact_values.excluded.name, contacts.c.name),
        "updated_at": _contact_values.excluded.updated_at,
    },
).returning(contacts.c.id)

# FOR UPDATE: the row lock that serialises every writer of one conversation until commit.
LOCK_CONVERSATION = (
    select(conversations.c.id, conversations.c.last_seq)
    .where(
        conversations.c.instance_id == bindparam("instance_id"),
        conversations.c.contact_id == bindparam("contact_id"),
    )
    .with_for_update()
)

CREATE_CONVERSATION = (
    insert(conversations)
    .values(
        id=bindparam("id"),
        org_id=bindparam("org_id"),
        instance_id=bindparam("instance_id"),
        contact_id=bindparam("contact_id"),
        status=ConversationStatus.OPEN,
        last_seq=0,
        last_message_at=bindparam("sent_at"),
        unread_count=0,
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    .on_conflict_do_nothing(constraint="uq_conversations_instance_contact")
    .returning(conversations.c.id)
)

INSERT_MESSAGE = (
    insert(messages)
    .values(
        id=bindparam("id"),
        org_id=bindparam("org_id"),
        conversation_id=bindparam("conversation_id"),
        instance_id=bindparam("instance_id"),
        seq=bindparam("seq"),
        gateway_message_id=bindparam("gateway_message_id"),
        direction=bindparam("direction"),
        type=bindparam("type"),
        body=bindparam("body"),
        status=bindparam("status"),
        sent_at=bindparam("sent_at"),
        received_at=bindparam("now"),
        raw=bindparam("raw"),
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    # The de-duplication arbiter (invariant 2): a redelivery inserts nothing and returns no row.
    .on_conflict_do_nothing(constraint="uq_messages_instance_gateway_id")
    .returning(messages.c.id)
)

_sent_at = bindparam("sent_at", type_=conversations.c.last_message_at.type)
_inbound = bindparam("inbound", type_=Boolean())
_newest = _sent_at >= conversations.c.last_message_at
UPDATE_SUMMARY = (
    update(conversations)
    .where(conversations.c.id == bindparam("conversation_id"))
    .values(
        last_seq=bindparam("seq"),
        last_message_at=func.greatest(conversations.c.last_message_at, _sent_at),
        # A late-arriving older message does not replace the preview of a newer one.
        last_message_preview=case(
            (_newest, bindparam("preview")), else_=conversations.c.last_message_preview
        ),
        last_message_direction=case(
            (_newest, bindparam("direction")), else_=conversations.c.last_message_direction
        ),
        # A customer writing adds one unread; an agent replying from the phone has read the chat.
        unread_count=case((_inbound, conversations.c.unread_count + 1), else_=0),
        # A customer writing into a closed conversation reopens it.
        status=case(
            (
                _inbound & (conversations.c.status == ConversationStatus.CLOSED.value),
                ConversationStatus.OPEN.value,
            ),
            else_=conversations.c.status,
        ),
        updated_at=bindparam("now"),
    )
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

# Forward-only (invariant 5): the caller passes the statuses that may precede the new one.
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
