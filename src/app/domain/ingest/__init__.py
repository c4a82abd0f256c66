"""Ingest: the webhook use case (issue 13), above the gateway adapters it uses.

controllers (the Litestar route) and app.server.webhook_path (the lean ASGI path) both run intake's
WebhookIntake: throttle → instance → verify → read → parse (service) → apply in a batch (batcher,
batch_rows, ingest_batch.sql) → answer after that commit. app.domain.gateways imports nothing from here.
"""
