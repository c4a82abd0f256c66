"""token revocation: agents.token_generation, agent_revocations, and the triggers that keep them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

An access token is refused once what it claims stops being true. Tokens carry the agent's
`token_generation`; a trigger bumps it whenever the agent is deactivated, demoted or promoted, moved to
another organisation, renamed (the e-mail is a claim) or given a new password — or raised by hand to log an
agent out everywhere — and a deleted agent gets a
generation no token carries. Both are recorded in agent_revocations (one row per agent, kept after a delete)
and announced with NOTIFY crm_token_revocations, so every API process forgets the agent's tokens and closes
their sockets at once, whatever made the change: the CLI, the API, or an operator's UPDATE in psql.
Triggers run in the changing transaction, so the notification goes out only if it commits.
"""

from __future__ import annotations

from collections.abc import Sequence

import advanced_alchemy.types
import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUMP_GENERATION = """
CREATE OR REPLACE FUNCTION crm_agent_bump_token_generation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.is_active AND NOT NEW.is_active)
       OR NEW.role IS DISTINCT FROM OLD.role
       OR NEW.org_id IS DISTINCT FROM OLD.org_id
       OR NEW.email IS DISTINCT FROM OLD.email
       OR NEW.password_hash IS DISTINCT FROM OLD.password_hash THEN
        NEW.token_generation := GREATEST(NEW.token_generation, OLD.token_generation + 1);
    ELSE
        -- never backwards; raising it by hand ("log out everywhere") is allowed
        NEW.token_generation := GREATEST(NEW.token_generation, OLD.token_generation);
    END IF;
    RETURN NEW;
END
$$;
"""

RECORD_REVOCATION = """
CREATE OR REPLACE FUNCTION crm_agent_record_revocation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_agent_id uuid;
    v_org_id uuid;
    v_generation integer;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_agent_id := OLD.id;
        v_org_id := OLD.org_id;
        v_generation := 2147483647;
    ELSIF NEW.token_generation > OLD.token_generation THEN
        v_agent_id := NEW.id;
        v_org_id := NEW.org_id;
        v_generation := NEW.token_generation;
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO agent_revocations (agent_id, org_id, generation, revoked_at)
    VALUES (v_agent_id, v_org_id, v_generation, now())
    ON CONFLICT (agent_id) DO UPDATE
        SET org_id = EXCLUDED.org_id,
            generation = GREATEST(agent_revocations.generation, EXCLUDED.generation),
            revoked_at = EXCLUDED.revoked_at;
    PERFORM pg_notify('crm_token_revocations', v_agent_id::text || ' ' || v_generation::text);
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    op.add_column(
        "agents", sa.Column("token_generation", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.create_table(
        "agent_revocations",
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column(
            "revoked_at",
            advanced_alchemy.types.datetime.DateTimeUTC(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_agent_revocations")),
    )
    op.create_index(
        op.f("ix_agent_revocations_revoked_at"), "agent_revocations", ["revoked_at"], unique=False
    )
    op.execute(BUMP_GENERATION)
    op.execute(RECORD_REVOCATION)
    op.execute(
        "CREATE TRIGGER agents_bump_token_generation BEFORE UPDATE ON agents "
        "FOR EACH ROW EXECUTE FUNCTION crm_agent_bump_token_generation()"
    )
    op.execute(
        "CREATE TRIGGER agents_record_revocation AFTER UPDATE OR DELETE ON agents "
        "FOR EACH ROW EXECUTE FUNCTION crm_agent_record_revocation()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS agents_record_revocation ON agents")
    op.execute("DROP TRIGGER IF EXISTS agents_bump_token_generation ON agents")
    op.execute("DROP FUNCTION IF EXISTS crm_agent_record_revocation()")
    op.execute("DROP FUNCTION IF EXISTS crm_agent_bump_token_generation()")
    op.drop_index(op.f("ix_agent_revocations_revoked_at"), table_name="agent_revocations")
    op.drop_table("agent_revocations")
    op.drop_column("agents", "token_generation")
