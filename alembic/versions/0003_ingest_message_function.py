"""crm_ingest_message(): a new message's whole write path in one database round trip

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

The function lives, readable and with its rules, in src/app/domain/ingest/ingest_message.sql (issue 13:
the core write lived only inside this migration). Applied as the file is: CREATE OR REPLACE, so a later
migration that changes the file applies it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL_FILE = Path(__file__).resolve().parents[2] / "src" / "app" / "domain" / "ingest" / "ingest_message.sql"


def upgrade() -> None:
    op.execute(SQL_FILE.read_text())


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS crm_ingest_message(uuid, uuid, text, text, text, text, text, text, text, "
        "timestamptz, jsonb, text, timestamptz, uuid, uuid, uuid)"
    )
