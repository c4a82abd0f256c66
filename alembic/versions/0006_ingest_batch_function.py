"""crm_ingest_batch(): a batch of webhooks applied in one call and one transaction (group commit)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Issue 13: one transaction, one round trip and one COMMIT per webhook capped ingest at a fraction of what
Postgres takes. The batcher (app/domain/ingest/batcher.py) now sends whatever webhooks arrived together
to crm_ingest_batch(), which applies each one in a subtransaction of its own (a refused one fails alone)
by calling crm_ingest_message() (0003) per message. The SQL lives, readable, in
src/app/domain/ingest/ingest_batch.sql, which documents the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL_FILE = Path(__file__).resolve().parents[2] / "src" / "app" / "domain" / "ingest" / "ingest_batch.sql"


def statements(sql: str) -> list[str]:
    """The file's top-level statements: each ends with ';' at a line's end followed by a blank line
    (the function body has none), comments before the first one dropped."""
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    return [part.strip() for part in body.split(";\n\n") if part.strip()]


def upgrade() -> None:
    for statement in statements(SQL_FILE.read_text()):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS crm_ingest_batch")
    op.execute("DROP TYPE IF EXISTS crm_ingest_outcome")
