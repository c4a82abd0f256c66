"""Ingest: webhooks' events applied to Postgres in batches (group commit, issue 13)."""
